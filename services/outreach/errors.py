"""What can go wrong in outreach's database work, named for what happened.

The service package (``services.outreach.service``, the workbench's database
work included) raises these, never HTTP statuses. Each subclasses the
``shared.errors`` class whose status it answers with, so the one handler
(``shared.errors.install_error_handlers``) turns it into the common error body
with that class's status and ``code``; this module is the one place that says
which status each one is:

======================  ======  ========================
error                   status  code
======================  ======  ========================
MalformedCursor         400     bad_request
TaskOfAnotherManager    403     forbidden
TaskNotFound            404     not_found
IdempotencyKeyReused    409     conflict
TaskAlreadyFinal        409     conflict
TaskTooFarAlong         409     conflict
NotACall                409     conflict
CallInWrongState        409     conflict
CallClaimedByAnother    409     conflict
CallNotClaimable        409     conflict
DueInThePast            422     unprocessable_entity
InvalidTask             422     unprocessable_entity
CallbackOutOfRange      422     unprocessable_entity
CallbackAfterDue        422     unprocessable_entity
======================  ======  ========================

The messages and details are part of the API (clients and tests read them):
change them only on purpose.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from shared.errors import BadRequest, Conflict, Forbidden, NotFound, UnprocessableEntity


class MalformedCursor(BadRequest):
    """A page cursor that ``encode_cursor`` did not make (or that cannot be compared)."""

    def __init__(self) -> None:
        super().__init__("cursor is malformed")


class TaskNotFound(NotFound):
    """No task has this id."""

    def __init__(self, task_id: uuid.UUID) -> None:
        super().__init__(f"no task {task_id}")
        self.task_id = task_id


class TaskOfAnotherManager(Forbidden):
    """The task exists, but belongs to an account manager the person may not see."""

    def __init__(self) -> None:
        super().__init__("this task belongs to another account manager")


class IdempotencyKeyReused(Conflict):
    """A client key already made a task, and this request asks for a different one."""

    def __init__(self, task_id: uuid.UUID) -> None:
        super().__init__(
            "this Idempotency-Key was used for a different task",
            details={"task_id": str(task_id)},
        )
        self.task_id = task_id


class TaskAlreadyFinal(Conflict):
    """The task is in a final state: there is nothing left to stop."""

    def __init__(self, status: str) -> None:
        super().__init__(f"task is already {status}", details={"status": status})
        self.status = status


class TaskTooFarAlong(Conflict):
    """An SMS being sent or sent cannot be stopped: the provider may have it."""

    def __init__(self, status: str) -> None:
        super().__init__(
            f"an SMS that is {status} cannot be stopped: the provider may have it",
            details={"status": status},
        )
        self.status = status


class NotACall(Conflict):
    """A call-only action (working it in the queue, claiming it) on a task that is no call.

    The message says which action (the caller's words); ``details`` is optional.
    """


class CallInWrongState(Conflict):
    """The call is not in a state that allows the action."""

    def __init__(self, status: str, allowed: tuple[str, ...], action: str) -> None:
        super().__init__(
            f"cannot {action} a call that is {status} (only when {' or '.join(allowed)})",
            details={"status": status},
        )
        self.status = status


class CallClaimedByAnother(Conflict):
    """The call is claimed by an agent other than the one acting."""

    def __init__(self, status: str, action: str) -> None:
        super().__init__(
            f"cannot {action} a call claimed by another agent", details={"status": status}
        )
        self.status = status


class CallNotClaimable(Conflict):
    """A given call could not be claimed: someone has it, or it is not due."""

    def __init__(self, status: str, assigned_to: str | None, *, queued: bool) -> None:
        super().__init__(
            "this call cannot be claimed now: it is "
            + (
                "not due yet or past its due time"
                if queued
                else f"already {status}" + (f" by {assigned_to}" if assigned_to else "")
            )
        )
        self.status = status


class DueInThePast(UnprocessableEntity):
    """A new task's due time has passed: it would expire at once."""

    def __init__(self, due_at: datetime) -> None:
        super().__init__(
            "due_at has passed; the task would expire at once",
            details={"due_at": due_at.isoformat()},
        )


class InvalidTask(UnprocessableEntity):
    """A new task fails the event contract's checks; ``problems`` lists each."""

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        super().__init__("the task is invalid", details=problems)


class CallbackOutOfRange(UnprocessableEntity):
    """A callback time not in the future, or too far ahead."""

    def __init__(self, callback_at: datetime) -> None:
        super().__init__(
            "callback_at must be in the future, at most 90 days ahead",
            details={"callback_at": callback_at.isoformat()},
        )


class CallbackAfterDue(UnprocessableEntity):
    """A callback time at or after the call's due time: it would expire first."""

    def __init__(self, due_at: datetime) -> None:
        super().__init__(
            "callback_at must be before the call's due_at",
            details={"due_at": due_at.isoformat()},
        )
