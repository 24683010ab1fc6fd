"""Run a service's FastAPI app under uvicorn with graceful shutdown on SIGTERM.

uvicorn turns SIGTERM/SIGINT into the app's lifespan shutdown, where each
service stops its consumer loop after the batch in hand and closes its clients.
"""

from __future__ import annotations

import gc

import uvicorn
from fastapi import FastAPI

from shared.logging import configure_logging
from shared.settings import BaseServiceSettings


def serve(app: FastAPI, settings: BaseServiceSettings, *, port: int, service: str) -> None:
    """Serve ``app`` until SIGTERM/SIGINT, then shut down cleanly."""
    configure_logging(settings.log_level, json=settings.log_json, service=service)
    tune_gc(settings.gc_young_threshold)
    uvicorn.run(
        app,
        host=settings.host,
        port=port,
        log_config=None,  # keep our JSON logging
        access_log=False,  # request metrics cover this; access logs would carry ids
        timeout_graceful_shutdown=30,
    )


def tune_gc(young_threshold: int) -> None:
    """Collect young objects every ``young_threshold`` allocations, older ones rarely.

    The services' objects are short-lived (a batch's events, rows and messages,
    freed by reference counting) or live as long as the process (the model,
    clients): frequent cyclic collections find almost nothing and scan the
    long-lived objects again and again. 0 keeps CPython's defaults.
    """
    if young_threshold > 0:
        gc.set_threshold(young_threshold, 20, 100)
