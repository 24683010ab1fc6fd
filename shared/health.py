"""Health and readiness probes, the same on every service."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Response

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

    @router.get("/readyz")
    async def readyz(response: Response) -> dict[str, object]:
        """Readiness: every named check passes (broker, topics, database, consumer)."""
        answers = await asyncio.gather(*(_bounded(check, timeout_s) for check in checks.values()))
        results = dict(zip(checks, answers, strict=True))
        ready = all(results.values())
        if not ready:
            response.status_code = 503
        return {"status": "ready" if ready else "not_ready", "checks": results}

    return router
