"""Ask a real Prometheus every dashboard query and rule expression; report which have data.

Start the services first (for instance ``churnwatch up --simulate 300
--simulate-days 31``), then::

    python deploy/prometheus/check_dashboards.py --duration 120

The script writes a Prometheus config scraping the four services on
localhost every 5 s (with deploy/prometheus/rules.yml), starts ``prometheus``
(Debian package ``prometheus``) on a free port with a throw-away data
directory, waits until every target is up, lets it scrape for ``--duration``
seconds, then runs each query (dashboard variables set to All, job
``churnwatch``) and prints one line per query: ``data`` (and
how many series), ``empty`` or ``error`` for a dashboard query; ``firing``,
``not firing`` or ``error`` for a rule. With ``--prometheus-url`` it uses a
running Prometheus instead of starting one. The exit status is 1 when a query
errors or a target is down, 0 otherwise (empty queries are listed, not fatal:
some series only appear after their first event, e.g. a dead-lettered record).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

HERE = Path(__file__).resolve().parent
DASHBOARDS = HERE.parent / "grafana" / "dashboards"
RULES = HERE / "rules.yml"
DEFAULT_PORTS = {"ingest": 8081, "scoring": 8082, "alerting": 8083, "outreach": 8084}


# What Grafana puts for the dashboards' variables when "All" is selected and the one job
# is churnwatch (deploy/grafana/generate.py, VARIABLES).
ALL_VARIABLES = {"job": "churnwatch", "namespace": ".*", "instance": ".*"}


def expand(expr: str, variables: dict[str, str] | None = None) -> str:
    """A panel query with the dashboard variables replaced, as Grafana sends it."""
    values = ALL_VARIABLES if variables is None else variables
    return re.sub(r"\$(\w+)|\$\{(\w+)\}", lambda m: values[m.group(1) or m.group(2)], expr)


def queries(variables: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(where, expression) for every dashboard target and every rule.

    Dashboard queries have their variables replaced by ``variables`` (default: All).
    """
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                where = f"{dashboard['uid']}: {panel['title']}"
                found.append((where, expand(target["expr"], variables)))
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    for group in rules["groups"]:
        for rule in group["rules"]:
            # A rule's answer is empty while all is well: for rules only an error counts.
            found.append((f"rule {rule['alert']}", rule["expr"]))
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(directory: Path, ports: dict[str, int], interval: str = "5s") -> Path:
    """A config like deploy/prometheus/prometheus.yml, for services on localhost."""
    config = yaml.safe_load((HERE / "prometheus.yml").read_text(encoding="utf-8"))
    config["global"]["scrape_interval"] = interval
    config["global"]["evaluation_interval"] = interval
    config["rule_files"] = [str(RULES)]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [
        {"targets": [f"127.0.0.1:{port}"], "labels": {"component": name}}
        for name, port in ports.items()
    ]
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def query(client: httpx.Client, url: str, expr: str) -> dict[str, Any]:
    """One instant query's JSON answer."""
    response = client.get(f"{url}/api/v1/query", params={"query": expr})
    answer: dict[str, Any] = response.json()
    return answer


def wait_for_targets(client: httpx.Client, url: str, count: int, timeout_s: float) -> None:
    """Until ``count`` churnwatch targets report up."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            result = query(client, url, 'up{job="churnwatch"} == 1')["data"]["result"]
            if len(result) >= count:
                return
        except (httpx.HTTPError, KeyError, ValueError):
            pass  # Prometheus still starting
        time.sleep(1)
    raise SystemExit(f"not all {count} targets up after {timeout_s:.0f}s")


def report(client: httpx.Client, url: str) -> int:
    """Print one line per query; return how many errored."""
    errors = 0
    for where, expr in queries():
        answer = query(client, url, expr)
        if answer.get("status") != "success":
            errors += 1
            print(f"error  {where}: {answer.get('error')}  [{expr}]")
            continue
        series = answer["data"]["result"]
        if where.startswith("rule "):
            state = f"firing ({len(series)})" if series else "not firing"
        else:
            state = f"data ({len(series)} series)" if series else "empty"
        print(f"{state:<17} {where}  [{' '.join(expr.split())}]")
    return errors


def main() -> int:
    """Run the check; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus-url", help="use this running Prometheus")
    parser.add_argument("--prometheus", default="prometheus", help="the prometheus binary")
    parser.add_argument("--duration", type=float, default=120, help="seconds to scrape first")
    for name, port in DEFAULT_PORTS.items():
        parser.add_argument(f"--{name}-port", type=int, default=port)
    args = parser.parse_args()
    ports = {name: getattr(args, f"{name}_port") for name in DEFAULT_PORTS}
    process = None
    with tempfile.TemporaryDirectory(prefix="churnwatch-prom-") as tmp:
        url = args.prometheus_url
        if url is None:
            binary = shutil.which(args.prometheus)
            if binary is None:
                raise SystemExit("prometheus not found: apt-get install prometheus")
            port = _free_port()
            url = f"http://127.0.0.1:{port}"
            with (Path(tmp) / "prometheus.log").open("wb") as log:
                process = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={write_config(Path(tmp), ports)}",
                        f"--storage.tsdb.path={tmp}/data",
                        f"--web.listen-address=127.0.0.1:{port}",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=log,
                )
        try:
            with httpx.Client(timeout=30) as client:
                wait_for_targets(client, url, len(ports), timeout_s=120)
                print(f"all {len(ports)} targets up; scraping for {args.duration:.0f}s")
                time.sleep(args.duration)  # collecting samples for rate() windows
                errors = report(client, url)
        finally:
            if process is not None:
                process.terminate()
                process.wait(30)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
