"""The four services and the SMS gateway as separate processes, on the session stack.

``pipeline`` (a module-scoped fixture in tests/conftest.py) starts them with a
fresh topic prefix and consumer groups, the default rules without their dwell
times, and stops them with SIGTERM, checking each shut down gracefully.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from churnwatch.embedded import free_port
from churnwatch.gateway import GatewaySettings, gateway_headers
from services.alerting.rules import DEFAULT_RULES_FILE
from tests.conftest import REPO, Stack, as_environ, fresh_env

SERVICES = {
    "sms-gateway": (["-m", "churnwatch", "sms-gateway"], "sms_gateway_port", "/healthz"),
    "ingest": (["-m", "services.ingest"], "ingest_port", "/readyz"),
    "scoring": (["-m", "services.scoring"], "scoring_port", "/readyz"),
    "alerting": (["-m", "services.alerting"], "alerting_port", "/readyz"),
    "outreach": (["-m", "services.outreach"], "outreach_port", "/readyz"),
}


@dataclass
class Pipeline:
    urls: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]]
    logs: Path
    environ: dict[str, str]  # the services' environment (settings)
    settings: dict[str, Any]  # tests.conftest.fresh_env's settings behind it


def _wait_ready(pipeline: Pipeline, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    pending = dict(pipeline.urls)
    with httpx.Client(timeout=2) as client:
        while pending:
            for name, url in list(pending.items()):
                if pipeline.processes[name].poll() is not None:
                    raise AssertionError(f"{name} exited early:\n{_log(pipeline, name)}")
                try:
                    if client.get(url + SERVICES[name][2]).status_code == 200:
                        del pending[name]
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                raise AssertionError(f"not ready: {sorted(pending)}")
            time.sleep(0.2)


def _log(pipeline: Pipeline, name: str) -> str:
    return (pipeline.logs / f"{name}.log").read_text(errors="replace")[-4000:]


def run_pipeline(
    stack: Stack,
    tmp_path_factory: pytest.TempPathFactory,
    *,
    extra_environ: dict[str, str] | None = None,
    unset: tuple[str, ...] = (),
) -> Iterator[Pipeline]:
    """Start the pipeline, yield it, stop it (the body of the ``pipeline`` fixture).

    ``extra_environ`` is added to every process's environment, ``unset`` removed
    from it.
    """
    settings = fresh_env(stack)
    ports = {name: free_port() for name in SERVICES}
    environ = {**os.environ, **as_environ(settings), "PYTHONPATH": str(REPO)}
    for name in unset:
        environ.pop(name, None)
    environ.update(extra_environ or {})
    environ.update({SERVICES[name][1].upper(): str(port) for name, port in ports.items()})
    environ["SMS_GATEWAY_URL"] = f"http://127.0.0.1:{ports['sms-gateway']}"
    outreach_url = f"http://127.0.0.1:{ports['outreach']}"
    environ["SMS_GATEWAY_RECEIPT_URL"] = f"{outreach_url}/v1/sms/receipts"
    environ["SMS_GATEWAY_INBOUND_URL"] = f"{outreach_url}/v1/sms/inbound"
    environ["OUTREACH_DISPATCH_INTERVAL_S"] = "0.2"
    logs = tmp_path_factory.mktemp("logs")
    # The default rules, without the retention dwell (30 min of wall time here).
    rules = logs / "rules.yaml"
    rules.write_text(
        DEFAULT_RULES_FILE.read_text()
        .replace("dwell: 30m", "dwell: 0s")
        .replace("dwell: 2h", "dwell: 0s")
    )
    environ["ALERTING_RULES_FILE"] = str(rules)
    processes = {}
    for name, (args, _, _) in SERVICES.items():
        with open(logs / f"{name}.log", "wb") as log:
            processes[name] = subprocess.Popen(
                [sys.executable, *args], env=environ, stdout=log, stderr=subprocess.STDOUT, cwd=REPO
            )
    result = Pipeline(
        {n: f"http://127.0.0.1:{p}" for n, p in ports.items()}, processes, logs, environ, settings
    )
    try:
        _wait_ready(result)
        yield result
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes: dict[str, int | str] = {}
        for name, process in processes.items():
            try:
                codes[name] = process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = "killed"
    # Graceful shutdown on SIGTERM: uvicorn runs the lifespan shutdown (the consumer
    # finishes its batch and commits), then re-raises the signal, hence -SIGTERM.
    assert codes == dict.fromkeys(SERVICES, -signal.SIGTERM), codes
    for name in SERVICES:
        assert "Application shutdown complete" in _log(result, name), name


async def get_json(url: str, **params: Any) -> Any:
    async with httpx.AsyncClient(timeout=5) as client:
        response = await client.get(url, params=params)
        response.raise_for_status()
        return response.json()


async def post_events(pipeline: Pipeline, events: list[dict[str, Any]]) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(pipeline.urls["ingest"] + "/v1/events", json=events)
    assert response.status_code == 202, response.text
    assert response.json()["accepted"] == len(events)


async def list_tasks(pipeline: Pipeline, **filters: str) -> list[dict[str, Any]]:
    page = await get_json(pipeline.urls["outreach"] + "/v1/tasks", **filters)
    return list(page["items"])


async def sms_to(pipeline: Pipeline, phone: str) -> list[dict[str, Any]]:
    # The stand-in's listing wants its token; the pipeline runs it with the default one.
    url = pipeline.urls["sms-gateway"] + "/v1/messages"
    headers = gateway_headers(GatewaySettings().sms_gateway_token)
    async with httpx.AsyncClient(timeout=5, headers=headers) as client:
        response = await client.get(url, params={"to": phone})
        response.raise_for_status()
        return list(response.json()["messages"])
