"""Health and readiness probes, the same on every service."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from shared.logging import REQUEST_ID
from shared.problems import ProblemResponse, error_responses, instance_of, problem_body

Check = Callable[[], Awaitable[bool]]

# The probes in deploy/k8s time out after 3 s: answer well within that even when a
# dependency hangs (a frozen broker accepts connections and never replies).
PROBE_CHECK_TIMEOUT_S = 1.5


async def _bounded(check: Check, timeout_s: float) -> bool:
    """The check's answer, or False if it raised or did not answer in time."""
    try:
        return bool(await asyncio.wait_for(check(), timeout_s))
    except Exception:
        return False


def health_router(
    checks: dict[str, Check], *, timeout_s: float = PROBE_CHECK_TIMEOUT_S
) -> APIRouter:
    """``GET /healthz`` (process alive) and ``GET /readyz`` (every dependency answers).

    The checks run concurrently, each bounded by ``timeout_s``: a check that
    hangs counts as failed, so ``/readyz`` answers within about ``timeout_s``.
    """
    router = APIRouter(tags=["probes"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process serves HTTP."""
        return {"status": "ok"}

    @router.get(
        "/readyz",
        responses=error_responses(
            503, described={503: "Not ready: checks says which dependency failed."}
        ),
    )
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: every named check passes (broker, topics, database, consumer).

        Ready: ``{"status": "ready", "checks": {...}}``. Not ready: a 503 problem
        (``service_unavailable``) with the same ``checks`` as an extension member.
        """
        answers = await asyncio.gather(*(_bounded(check, timeout_s) for check in checks.values()))
        results = dict(zip(checks, answers, strict=True))
        if all(results.values()):
            return JSONResponse({"status": "ready", "checks": results})
        failed = ", ".join(name for name, ok in results.items() if not ok)
        body = problem_body(
            code="service_unavailable",
            status=503,
            detail=f"not ready: {failed}",
            instance=instance_of(request.scope),
            request_id=REQUEST_ID.get(),
        )
        return ProblemResponse({**body, "checks": results}, status_code=503)

    return router
