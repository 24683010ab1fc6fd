"""``churnwatch up --sample`` on a fresh data directory: the README's `make run`, minus make.

Starts the embedded broker and PostgreSQL, the services and the gateway, feeds
the sample, and checks that Ctrl-C (SIGINT to the process group) leaves no
process behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from churnwatch.embedded import free_port
from tests.helpers import spawn_up

pytestmark = pytest.mark.e2e


def _wait_for(path: Path, pattern: str, process: subprocess.Popen[bytes], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if re.search(pattern, text):
            return text
        if process.poll() is not None:
            raise AssertionError(f"churnwatch up exited ({process.returncode}):\n{text}")
        time.sleep(0.2)
    raise AssertionError(f"no {pattern!r} after {timeout_s}s:\n{path.read_text(errors='replace')}")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_up_runs_the_sample_and_ctrl_c_leaves_nothing_behind(tmp_path: Path) -> None:
    environ = {
        k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")
    }
    output = tmp_path / "up.log"
    data_dir = tmp_path / "data"
    process, environ = spawn_up(
        ["--sample", "--data-dir", str(data_dir), "--broker-port", str(free_port())],
        environ,
        output,
    )
    try:
        text = _wait_for(output, r"churnwatch is up", process, timeout_s=120)
        match = re.search(r"(\d+) SMS at the gateway, (\d+) retention task", text)
        assert match, text
        assert int(match.group(1)) >= 1 and int(match.group(2)) >= 1, text
        assert "in-memory" in text  # the README's warning, also said at start
        started = [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
        postmaster = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        assert len(started) >= 6  # broker, gateway, four services
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does to the foreground group
        assert process.wait(90) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    left = [pid for pid in [*started, postmaster] if _alive(pid)]
    assert left == [], f"processes left behind: {left}"
