"""``churnwatch up`` on a fresh data directory: the README's `make run`, minus make.

The first test starts the durable embedded broker (Tansu on SeaweedFS) and
PostgreSQL, the services and the gateway, feeds the sample, and checks that
Ctrl-C (SIGINT to the process group) leaves no process behind. The second kills
a service with SIGKILL and checks that ``up`` brings it back by itself while
the others keep running, and that events accepted around the kill are applied.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from churnwatch.embedded import free_port
from tests.helpers import calls, sid, spawn_up

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


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
        assert "durable" in text  # the default broker storage, said at start
        started = [p.pid for p in psutil.Process(process.pid).children(recursive=True)]
        postmaster = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        assert len(started) >= 7  # object store, broker, gateway, four services
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does to the foreground group
        assert process.wait(90) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    left = [pid for pid in [*started, postmaster] if _alive(pid)]
    assert left == [], f"processes left behind: {left}"


def _children(up: subprocess.Popen[bytes]) -> dict[str, int]:
    """``up``'s running children by what they run (a module or a binary's name)."""
    found = {}
    for child in psutil.Process(up.pid).children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                continue
            command = child.cmdline()
        except psutil.NoSuchProcess:
            continue
        if not command:  # exiting right now
            continue
        name = command[2] if command[1:2] == ["-m"] else Path(command[0]).name
        found[name] = child.pid
    return found


def test_up_restarts_a_killed_service_and_the_rest_keep_running(tmp_path: Path) -> None:
    environ = {
        k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")
    }
    output = tmp_path / "up.log"
    data_dir = tmp_path / "data"
    process, environ = spawn_up(
        # memory: this drills a service, not the broker (tests/test_embedded_durable.py does).
        ["--broker-storage", "memory", "--data-dir", str(data_dir)]
        + ["--broker-port", str(free_port())],
        environ,
        output,
    )
    try:
        _wait_for(output, r"churnwatch is up", process, timeout_s=120)
        scoring_url = f"http://127.0.0.1:{environ['SCORING_PORT']}"
        ingest_url = f"http://127.0.0.1:{environ['INGEST_PORT']}"
        headers = {"Authorization": f"Bearer {(data_dir / 'dev-api-key').read_text().strip()}"}
        before = _children(process)
        assert {"services.scoring", "services.ingest", "churnwatch"} <= before.keys(), before
        subscribers = [sid(), sid()]
        posted = [calls(s, n=3, competitor=True, days_ago=1) for s in subscribers]
        with httpx.Client(timeout=30, headers=headers) as client:
            # One batch accepted just before the kill, one while scoring is down.
            assert client.post(ingest_url + "/v1/events", json=posted[0]).status_code == 202
            os.kill(before["services.scoring"], signal.SIGKILL)
            assert client.post(ingest_url + "/v1/events", json=posted[1]).status_code == 202

            deadline = time.monotonic() + 90
            while True:
                now = _children(process)
                new_pid = now.get("services.scoring")
                try:
                    ready = client.get(scoring_url + "/readyz").status_code == 200
                except httpx.HTTPError:
                    ready = False
                if new_pid not in (None, before["services.scoring"]) and ready:
                    break
                assert process.poll() is None, output.read_text()
                assert time.monotonic() < deadline, output.read_text()
                time.sleep(0.2)
            for name, pid in before.items():
                if name != "services.scoring":
                    assert now.get(name) == pid, f"{name} was restarted too: {before} {now}"

            for subscriber, events in zip(subscribers, posted, strict=True):
                url = f"{scoring_url}/v1/subscribers/{subscriber}/risk"
                deadline = time.monotonic() + 60
                while (response := client.get(url)).status_code != 200:
                    assert time.monotonic() < deadline, (subscriber, response.text)
                    time.sleep(0.2)
                # Applied: scored from the subscriber's newest event.
                assert response.json()["cause_event_id"] == events[-1]["event_id"]
        # The supervisor probes on its own schedule: its line may come after ours.
        text = _wait_for(output, r"scoring is ready again", process, timeout_s=30)
        assert re.search(r"scoring exited \(SIGKILL\).*restart attempt 1 in 1 s", text), text
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(90) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_restart_delays_double_to_the_cap_and_reset_after_a_minute_up() -> None:
    from churnwatch.stack import Backoff

    backoff = Backoff()
    assert [backoff.next_delay(0.5) for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.failures == 7  # a crash loop: still retried, at the cap
    assert backoff.next_delay(61.0) == 1  # it had stayed up for a minute
    assert backoff.next_delay(3.0) == 2
