"""Outreach HTTP routes: the tasks API for other systems, and the call queue for agents.

Every route answers errors as problem details (``application/problem+json``,
``shared.errors``) and documents them in the OpenAPI document at ``/openapi.json``.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Response, status
from fastapi.exceptions import RequestValidationError

from services.outreach import metrics, service
from services.outreach.deps import ClockDep, DispatcherDep, EngineDep, SettingsDep
from services.outreach.schemas import (
    AgentRequest,
    CancelRequest,
    ClaimedTask,
    Instant,
    OutcomeRequest,
    ScriptOut,
    TaskCreate,
    TaskDetail,
    TaskOut,
    TaskPage,
)
from services.outreach.scripts import scripts_for
from services.outreach.service import claim_call, queued_calls, record_outcome, start_call
from shared.auth import require_scope
from shared.errors import NotFound, error_responses
from shared.events import Channel, TaskKind

router = APIRouter(prefix="/v1")

TASKS = "tasks"
CALL_QUEUE = "call queue"

QUEUE_PATTERN = r"^[^\x00-\x1f\x7f]+$"
# Printable ASCII without spaces: what clients use as keys (UUIDs, "crm-4711", ...).
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]+$"

TaskId = Annotated[uuid.UUID, Path(description="The task's id (a UUID).")]


def mask(phone: str | None) -> str | None:
    """Only the last three digits of a phone number leave the service."""
    return None if not phone else "*" * (len(phone) - 3) + phone[-3:]


def _task_out(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "phone_masked": mask(row.get("phone"))}


def _check_range(name: str, start: datetime | None, end: datetime | None) -> None:
    """A range whose start is after its end is a 422, like any other invalid parameter."""
    if start is not None and end is not None and start > end:
        raise RequestValidationError(
            [
                {
                    "loc": ("query", f"{name}_to"),
                    "msg": f"{name}_to must not be before {name}_from",
                    "type": "range",
                }
            ]
        )


# --- the tasks API ----------------------------------------------------------------------


@router.get(
    "/tasks",
    dependencies=[require_scope("tasks:read")],
    response_model=TaskPage,
    tags=[TASKS],
    summary="List tasks",
    responses=error_responses(400, 422, 503),
)
async def list_tasks(
    engine: EngineDep,
    settings: SettingsDep,
    subscriber_id: Annotated[
        str | None,
        Query(max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$", description="Exact."),
    ] = None,
    kind: TaskKind | None = None,
    status: Annotated[
        str | None, Query(pattern=r"^[a-z_]{1,16}$", description="A task state, e.g. queued.")
    ] = None,
    channel: Channel | None = None,
    queue: Annotated[
        str | None,
        Query(
            max_length=80,
            pattern=QUEUE_PATTERN,
            description="A call queue; the general queue also lists calls without one.",
        ),
    ] = None,
    created_from: Annotated[Instant | None, Query(description="created_at >= this.")] = None,
    created_to: Annotated[Instant | None, Query(description="created_at < this.")] = None,
    due_from: Annotated[Instant | None, Query(description="due_at >= this.")] = None,
    due_to: Annotated[Instant | None, Query(description="due_at < this.")] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size.")] = 50,
    cursor: Annotated[
        str | None, Query(max_length=200, description="next_cursor of the previous page.")
    ] = None,
) -> TaskPage:
    """Tasks, newest first, filtered; pages are chained with ``next_cursor``."""
    _check_range("created", created_from, created_to)
    _check_range("due", due_from, due_to)
    async with engine.connect() as conn:
        rows, next_cursor = await service.list_tasks(
            conn,
            subscriber_id=subscriber_id,
            kind=kind,
            status=status,
            channel=channel,
            queue=queue,
            general_queue=settings.outreach_general_queue,
            created_from=created_from,
            created_to=created_to,
            due_from=due_from,
            due_to=due_to,
            limit=limit,
            cursor=cursor,
        )
    return TaskPage(
        items=[TaskOut.model_validate(_task_out(r)) for r in rows], next_cursor=next_cursor
    )


@router.post(
    "/tasks",
    dependencies=[require_scope("tasks:write")],
    response_model=TaskOut,
    status_code=status.HTTP_201_CREATED,
    tags=[TASKS],
    summary="Create a task by hand (idempotent)",
    responses={
        200: {"model": TaskOut, "description": "The task this key made before (a replay)."},
        **error_responses(409, 413, 422, 503),
    },
)
async def create_task(
    body: TaskCreate,
    engine: EngineDep,
    clock: ClockDep,
    dispatcher: DispatcherDep,
    response: Response,
    idempotency_key: Annotated[
        str,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=128,
            pattern=IDEMPOTENCY_KEY_PATTERN,
            description="The client's key for this task: sending the same key and body "
            "again gives the same task (200); the same key with another body is a 409.",
        ),
    ],
) -> TaskOut:
    """Make a task by hand (an SMS to send or a call to queue); 201 when new, 200 on a replay."""
    async with engine.begin() as conn:
        row, created = await service.create_manual_task(
            conn, body=body, client_key=idempotency_key, now=clock.now()
        )
    if created:
        metrics.TASKS_STORED.labels(row["kind"], row["channel"]).inc()
        # None when the app serves without its lifespan (as in tests).
        if row["channel"] == Channel.SMS.value and dispatcher is not None:
            dispatcher.wakeup.set()  # send it now rather than at the next interval
    else:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/v1/tasks/{row['task_id']}"
    return TaskOut.model_validate(_task_out(row))


@router.get(
    "/tasks/{task_id}",
    dependencies=[require_scope("tasks:read")],
    response_model=TaskDetail,
    tags=[TASKS],
    summary="Get a task with its audit trail",
    responses=error_responses(404, 422, 503),
)
async def get_task(task_id: TaskId, engine: EngineDep) -> TaskDetail:
    """One task with its audit trail."""
    async with engine.connect() as conn:
        row = await service.get_task(conn, task_id=task_id)
    if row is None:
        raise NotFound(f"no task {task_id}")
    return TaskDetail.model_validate(_task_out(row))


@router.post(
    "/tasks/{task_id}/cancel",
    dependencies=[require_scope("tasks:write")],
    response_model=TaskOut,
    tags=[TASKS],
    summary="Cancel a task not yet done",
    responses=error_responses(404, 409, 413, 422, 503),
)
async def cancel_task(
    task_id: TaskId, body: CancelRequest, engine: EngineDep, clock: ClockDep
) -> TaskOut:
    """Cancel a task, recording who and why; 409 if it is final or cannot be stopped."""
    async with engine.begin() as conn:
        row = await service.cancel_task(
            conn,
            task_id=task_id,
            actor=body.actor,
            reason=body.reason,
            now=clock.now(),
        )
    if row["channel"] == Channel.CALL.value:
        metrics.CALLS.labels("cancelled", "").inc()
    return TaskOut.model_validate(_task_out(row))


# --- the call queue ---------------------------------------------------------------------


@router.post(
    # ':path', so that a queue named after a manager id with a '/' can be claimed too.
    "/call-queues/{queue:path}/claim",
    dependencies=[require_scope("queue:work")],
    response_model=ClaimedTask,
    tags=[CALL_QUEUE],
    summary="Claim the most urgent due call of a queue",
    responses={
        204: {"description": "No call in this queue is due now."},
        **error_responses(413, 422, 503),
    },
)
async def claim(
    queue: Annotated[
        str,
        Path(
            max_length=80,
            pattern=QUEUE_PATTERN,
            description="'am:<account manager id>' or a shared queue such as 'general'.",
        ),
    ],
    body: AgentRequest,
    engine: EngineDep,
    clock: ClockDep,
    settings: SettingsDep,
) -> ClaimedTask | Response:
    """Assign the queue's most urgent due call to the agent, with scripts for its reasons.

    Safe under concurrent callers: each gets a different call, or a 204.
    """
    async with engine.begin() as conn:
        row = await claim_call(
            conn,
            queue=queue,
            agent_id=body.agent_id,
            now=clock.now(),
            general_queue=settings.outreach_general_queue,
        )
    if row is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    scripts = [
        ScriptOut(reason_codes=codes, topic=s.topic, title=s.title, text=s.text)
        for codes, s in scripts_for(row["reason_codes"], row["language"])
    ]
    return ClaimedTask.model_validate({**_task_out(row), "scripts": scripts})


@router.post(
    "/tasks/{task_id}/start",
    dependencies=[require_scope("queue:work")],
    response_model=TaskOut,
    tags=[CALL_QUEUE],
    summary="Start a claimed call",
    responses=error_responses(404, 409, 413, 422, 503),
)
async def start(task_id: TaskId, body: AgentRequest, engine: EngineDep, clock: ClockDep) -> TaskOut:
    """``assigned → in_progress``, by the agent who claimed the call."""
    async with engine.begin() as conn:
        row = await start_call(conn, task_id=task_id, agent_id=body.agent_id, now=clock.now())
    return TaskOut.model_validate(_task_out(row))


@router.post(
    "/tasks/{task_id}/outcome",
    dependencies=[require_scope("queue:work")],
    response_model=TaskOut,
    tags=[CALL_QUEUE],
    summary="Record a call's outcome",
    responses=error_responses(404, 409, 413, 422, 503),
)
async def outcome(
    task_id: TaskId, body: OutcomeRequest, engine: EngineDep, clock: ClockDep
) -> TaskOut:
    """Complete the call with its outcome, or put it back in its queue for a callback."""
    async with engine.begin() as conn:
        row = await record_outcome(
            conn,
            task_id=task_id,
            agent_id=body.agent_id,
            outcome=body.outcome,
            callback_at=body.callback_at,
            note=body.note,
            offer=body.offer,
            now=clock.now(),
        )
    return TaskOut.model_validate(_task_out(row))


@router.get(
    "/call-queue",
    dependencies=[require_scope("queue:work")],
    response_model=list[TaskOut],
    tags=[CALL_QUEUE],
    summary="List the due calls",
    responses=error_responses(422, 503),
)
async def call_queue(
    engine: EngineDep,
    clock: ClockDep,
    settings: SettingsDep,
    account_manager_id: Annotated[
        str | None, Query(max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")
    ] = None,
    queue: Annotated[str | None, Query(max_length=80, pattern=QUEUE_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[TaskOut]:
    """Queued calls that are due to be worked, most urgent first.

    Optionally only one account manager's, or one queue's ('am:<id>', 'general').
    """
    async with engine.connect() as conn:
        rows = await queued_calls(
            conn,
            account_manager_id=account_manager_id,
            queue=queue,
            now=clock.now(),
            limit=limit,
            general_queue=settings.outreach_general_queue,
        )
    return [TaskOut.model_validate(_task_out(r)) for r in rows]
