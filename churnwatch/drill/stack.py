"""The stack a drill runs on: ``churnwatch up`` as an operator starts it, on free ports.

The drill harness treats the product as a black box. It starts ``python -m
churnwatch up`` (embedded broker and PostgreSQL, the four services, the SMS
gateway stand-in) in its own session, finds its processes by what they run,
and does to them what a fault does (``kill -9``, ``SIGSTOP``, a PostgreSQL
restart). Recovering is the product's job (``up`` supervises its children);
the harness never restarts a service itself.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil

from churnwatch.embedded import free_port, pg_ctl
from shared.topics import Topics

SERVICES = ("ingest", "scoring", "alerting", "outreach")
PORT_SETTINGS = {
    "ingest": "INGEST_PORT",
    "scoring": "SCORING_PORT",
    "alerting": "ALERTING_PORT",
    "outreach": "OUTREACH_PORT",
    "sms-gateway": "SMS_GATEWAY_PORT",
}
# What each process runs (its command line), to find it among ``up``'s children.
_COMMAND = {
    "ingest": "services.ingest",
    "scoring": "services.scoring",
    "alerting": "services.alerting",
    "outreach": "services.outreach",
    "sms-gateway": "sms-gateway",
    "broker": "tansu",
}
GATEWAY_TOKEN = "drill-gateway-token"  # noqa: S105 - a throwaway stack's own secret


class StackError(RuntimeError):
    """The stack did not start, or a process the drill needs is not there."""


def _quiet_window_away_from(now: datetime) -> str:
    """A one-minute quiet window twelve hours from ``now`` (UTC): every SMS is due now.

    Marketing SMS wait for the end of quiet hours; a drill must not depend on the
    time of day it runs at, or SMS would wait for the morning and never be final.
    """
    start = now + timedelta(hours=12)
    end = start + timedelta(minutes=1)
    return f"{start:%H:%M}-{end:%H:%M}"


@dataclass
class UpStack:
    """One ``churnwatch up`` process and what it started."""

    data_dir: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    log_path: Path
    broker_port: int
    urls: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(
        cls,
        data_dir: Path,
        *,
        up_args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
        ready_timeout_s: float = 240.0,
    ) -> UpStack:
        """Start ``churnwatch up`` on free ports with ``data_dir``; wait until it is up."""
        data_dir.mkdir(parents=True, exist_ok=True)
        environ = {
            k: v
            for k, v in (env if env is not None else os.environ).items()
            if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")
        }
        for setting in PORT_SETTINGS.values():
            environ[setting] = str(free_port())
        environ["SMS_GATEWAY_URL"] = f"http://127.0.0.1:{environ['SMS_GATEWAY_PORT']}"
        environ.setdefault("SMS_GATEWAY_TOKEN", GATEWAY_TOKEN)
        environ.setdefault("OUTREACH_QUIET_HOURS", _quiet_window_away_from(datetime.now(UTC)))
        log_path = data_dir / "up.log"
        broker_port = free_port()
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "churnwatch", "up", "--data-dir", str(data_dir)),
                    *("--broker-port", str(broker_port), *up_args),
                ],
                env=environ,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        stack = cls(data_dir, process, environ, log_path, broker_port)
        stack.urls = {
            name: f"http://127.0.0.1:{environ[setting]}" for name, setting in PORT_SETTINGS.items()
        }
        try:
            stack.wait_for_log(r"churnwatch is up", timeout_s=ready_timeout_s)
        except BaseException:
            stack.stop()
            raise
        return stack

    def log_text(self) -> str:
        """What ``up`` printed so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, pattern: str, *, timeout_s: float) -> str:
        """Poll ``up``'s output until ``pattern`` appears (or it exits, or time is up)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.log_text()
            if re.search(pattern, text):
                return text
            if self.process.poll() is not None:
                raise StackError(f"churnwatch up exited ({self.process.returncode}):\n{text}")
            time.sleep(0.2)
        raise StackError(f"no {pattern!r} after {timeout_s:.0f} s:\n{self.log_text()[-4000:]}")

    @property
    def api_key(self) -> str:
        """The all-scopes key ``up`` made for its own session."""
        return (self.data_dir / "dev-api-key").read_text().strip()

    @property
    def gateway_token(self) -> str:
        """The SMS gateway stand-in's token."""
        return self.env["SMS_GATEWAY_TOKEN"]

    @property
    def bootstrap_servers(self) -> str:
        """The embedded broker's address."""
        return f"127.0.0.1:{self.broker_port}"

    @property
    def events_topic(self) -> str:
        """The topic ingest produces to."""
        return Topics(self.env.get("KAFKA_TOPIC_PREFIX", "churnwatch")).events

    @property
    def pgdata(self) -> Path:
        """The embedded PostgreSQL's data directory."""
        return self.data_dir / "postgres"

    @property
    def database_url(self) -> str:
        """``DATABASE_URL`` of the embedded PostgreSQL (from its ``postmaster.pid``)."""
        lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
        port, socket_dir = lines[3].strip(), lines[4].strip()
        return f"postgresql+asyncpg://postgres:@/postgres?host={socket_dir}&port={port}"

    def pid(self, name: str) -> int:
        """The running process of ``name`` (a service, ``sms-gateway`` or ``broker``)."""
        needle = _COMMAND[name]
        for child in psutil.Process(self.process.pid).children(recursive=True):
            try:
                command = " ".join(child.cmdline())
                if needle in command and child.status() != psutil.STATUS_ZOMBIE:
                    return child.pid
            except psutil.NoSuchProcess:
                continue
        raise StackError(f"no running {name} process under churnwatch up")

    def processes(self) -> list[int]:
        """Every process of the stack now: ``up``'s descendants and the postmaster."""
        pids = [self.process.pid]
        with contextlib.suppress(psutil.NoSuchProcess):
            pids += [c.pid for c in psutil.Process(self.process.pid).children(recursive=True)]
        with contextlib.suppress(OSError, ValueError, IndexError):
            pids.append(int((self.pgdata / "postmaster.pid").read_text().split()[0]))
        return pids

    def signal(self, name: str, signum: signal.Signals) -> int:
        """Send ``signum`` to ``name``'s process; return its pid."""
        pid = self.pid(name)
        os.kill(pid, signum)
        return pid

    def ready(self, name: str) -> bool:
        """Whether the service's ``/readyz`` answers 200."""
        probe = "/healthz" if name == "sms-gateway" else "/readyz"
        try:
            return httpx.get(self.urls[name] + probe, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_replaced(self, name: str, old_pid: int, *, timeout_s: float) -> float:
        """Wait until ``name`` runs again under a new pid and is ready; return the seconds."""
        started = time.monotonic()
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            try:
                if self.pid(name) != old_pid and (name == "broker" or self.ready(name)):
                    return time.monotonic() - started
            except StackError:
                pass
            if self.process.poll() is not None:
                raise StackError(f"churnwatch up exited ({self.process.returncode})")
            time.sleep(0.2)
        raise StackError(f"{name} was not back after {timeout_s:.0f} s:\n{self.log_text()[-3000:]}")

    def restart_postgres(self) -> None:
        """Restart the embedded PostgreSQL as an operator would (``pg_ctl restart``).

        ``-m immediate`` stops it as a crash does (no checkpoint, open connections cut).
        """
        for args in (("-m", "immediate", "-w", "stop"), ("-w", "restart")):
            pg_ctl(self.pgdata, *args)

    def stop(self, *, timeout_s: float = 120.0) -> int | None:
        """Stop ``up`` as Ctrl-C does and wait; kill the group if it hangs. Its exit code."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGINT)
                return self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode
