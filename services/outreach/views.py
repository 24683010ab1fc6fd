"""Outreach HTTP routes: the tasks API and the call queue."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from services.outreach import service
from services.outreach.queue import queued_calls
from services.outreach.schemas import TaskDetail, TaskOut, TaskPage
from shared.errors import NotFound

router = APIRouter(prefix="/v1", tags=["tasks"])


def mask(phone: str | None) -> str | None:
    """Only the last three digits of a phone number leave the service."""
    return None if not phone else "*" * (len(phone) - 3) + phone[-3:]


def _task_out(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "phone_masked": mask(row.get("phone"))}


@router.get("/tasks", response_model=TaskPage)
async def list_tasks(
    request: Request,
    subscriber_id: Annotated[str | None, Query(max_length=64)] = None,
    kind: Annotated[str | None, Query(max_length=32)] = None,
    status: Annotated[str | None, Query(max_length=16)] = None,
    channel: Annotated[str | None, Query(max_length=8)] = None,
    queue: Annotated[str | None, Query(max_length=80)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> TaskPage:
    """Tasks, newest first, filtered by subscriber, kind, status, channel and call queue."""
    async with request.app.state.runtime.engine.connect() as conn:
        rows, next_cursor = await service.list_tasks(
            conn,
            subscriber_id=subscriber_id,
            kind=kind,
            status=status,
            channel=channel,
            queue=queue,
            limit=limit,
            cursor=cursor,
        )
    return TaskPage(
        items=[TaskOut.model_validate(_task_out(r)) for r in rows], next_cursor=next_cursor
    )


@router.get("/tasks/{task_id}", response_model=TaskDetail)
async def get_task(task_id: uuid.UUID, request: Request) -> TaskDetail:
    """One task with its audit trail."""
    async with request.app.state.runtime.engine.connect() as conn:
        row = await service.get_task(conn, task_id=task_id)
    if row is None:
        raise NotFound(f"no task {task_id}")
    return TaskDetail.model_validate(_task_out(row))


@router.get("/call-queue", response_model=list[TaskOut], tags=["call queue"])
async def call_queue(
    request: Request,
    account_manager_id: Annotated[str | None, Query(max_length=64)] = None,
    queue: Annotated[str | None, Query(max_length=80)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[TaskOut]:
    """Queued calls that are due to be worked, most urgent first.

    Optionally only one account manager's, or one queue's ('am:<id>', 'general').
    """
    async with request.app.state.runtime.engine.connect() as conn:
        rows = await queued_calls(
            conn,
            account_manager_id=account_manager_id,
            queue=queue,
            now=datetime.now(UTC),
            limit=limit,
        )
    return [TaskOut.model_validate(_task_out(r)) for r in rows]
