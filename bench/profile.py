"""``python -m bench.profile scoring|ingest``: sample a service process with py-spy under load.

Starts the embedded stack and the service as in the benchmark, attaches
``py-spy record`` to the process while the benchmark's load runs, and writes
the collapsed stacks (``<out>/<service>.txt``, for flame graph tools) and a
summary of the top frames by own time and by inclusive time
(``<out>/<service>-top.txt``). The findings are in docs/performance.md.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench import ingest, scoring
from bench.common import ROOT, Proc, fresh_prefix, run, stack, start, wait_ready
from churnwatch.embedded import stop_processes
from churnwatch.synth import generate


def _spy(proc: Proc, out: Path, rate: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen(
        [
            *(binary, "record", "--pid", str(proc.pid), "--rate", str(rate)),
            *("--format", "raw", "--nonblocking", "--output", str(out)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _finish(spy: subprocess.Popen[bytes]) -> None:
    # py-spy writes its output when interrupted, like Ctrl-C.
    spy.send_signal(signal.SIGINT)
    spy.wait(60)


def summarise(collapsed: Path, top: int = 40) -> str:
    """The top frames by own samples and by inclusive samples, as text."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text:
            continue
        count = int(count_text)
        frames = [f.strip() for f in stack_text.split(";")]
        # The first frame is the thread ("process ... " / "thread ..."): not code.
        # Lines are dropped ("f (file.py:12)" -> "f (file.py)"): one row per function.
        code = [re.sub(r":\d+\)$", ")", f) for f in frames if "(" in f]
        if not code:
            continue
        total += count
        own[code[-1]] += count
        for frame in set(code):
            inclusive[frame] += count
    lines = [f"{total} samples", "", "own time:"]
    lines += [f"{100 * n / total:6.1f}%  {frame}" for frame, n in own.most_common(top)]
    lines += ["", "inclusive time:"]
    lines += [f"{100 * n / total:6.1f}%  {frame}" for frame, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Profile one service under the benchmark's load."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("service", choices=("scoring", "scoring-1m", "ingest", "ingest-single"))
    parser.add_argument("--out", type=Path, default=ROOT / ".churnwatch" / "profiles")
    parser.add_argument("--rate", type=int, default=100, help="samples per second")
    parser.add_argument("--subscribers", type=int, default=2000)
    args = parser.parse_args()
    service = "scoring" if args.service.startswith("scoring") else "ingest"
    args.out.mkdir(parents=True, exist_ok=True)
    collapsed = args.out / f"{args.service}.txt"
    raw = generate(subscribers=args.subscribers, days=35, seed=5).events
    with stack() as st:
        prefix = fresh_prefix(f"prof-{args.service}")
        if args.service.startswith("scoring"):
            blob = scoring.trained_model()
            events = scoring.relabel(raw, prefix)
            if args.service == "scoring-1m":
                # The growth section's largest size: 1M stored subscribers,
                # events to uniformly drawn ones (nearly all cache misses).
                templates = scoring.make_templates(st, blob, subscribers=200, days=35)
                copies = scoring.growth_populate(st, templates, 1_000_000)
                events = scoring.growth_events(
                    templates, copies=copies, population=1_000_000, events=50_000, seed=1
                )
            run(scoring.store_model(st, prefix, blob))
            tail_ids = run(scoring.produce(st, prefix, events))
            procs = [start(st, service, st.environ(prefix))]
            try:
                wait_ready(procs)
                spy = _spy(procs[0], collapsed, args.rate)
                result = run(scoring.until_done(st, procs, len(events), tail_ids))
                _finish(spy)
            finally:
                stop_processes(procs)
            print(f"{args.service}: {result.eps:,.0f} events/s while sampled")
        else:
            procs = [start(st, "ingest", st.environ(prefix))]
            try:
                wait_ready(procs)
                spy = _spy(procs[0], collapsed, args.rate)
                if args.service == "ingest":
                    eps = ingest.batch_eps(procs[0].url, raw[:100_000])
                    what = "events/s in batches of 1,000"
                else:
                    eps = ingest.single_rps(procs[0].url, raw[:2000])
                    what = "requests/s of one event"
                _finish(spy)
            finally:
                stop_processes(procs)
            print(f"ingest: {eps:,.0f} {what} while sampled")
    summary = summarise(collapsed)
    (args.out / f"{args.service}-top.txt").write_text(summary)
    print(summary)


if __name__ == "__main__":
    main()
