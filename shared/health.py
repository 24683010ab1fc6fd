"""Health and readiness probes, the same on every service."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Response

Check = Callable[[], Awaitable[bool]]


def health_router(checks: dict[str, Check]) -> APIRouter:
    """``GET /healthz`` (process alive) and ``GET /readyz`` (every dependency answers)."""
    router = APIRouter(tags=["probes"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        """Liveness: the process serves HTTP."""
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz(response: Response) -> dict[str, object]:
        """Readiness: every named check passes (broker, database, consumer)."""
        results = {name: await check() for name, check in checks.items()}
        ready = all(results.values())
        if not ready:
            response.status_code = 503
        return {"status": "ready" if ready else "not_ready", "checks": results}

    return router
