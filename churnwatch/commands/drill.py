"""``churnwatch drill``: fault drills on the embedded stack (docs/faults.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from churnwatch.commands import console


def drill(
    names: Annotated[
        list[str] | None, typer.Argument(help="Drills to run (default: all; see --list).")
    ] = None,
    short: Annotated[bool, typer.Option(help="Only the short run CI does.")] = False,
    list_drills: Annotated[bool, typer.Option("--list", help="List the drills and exit.")] = False,
    rate: Annotated[float, typer.Option(help="Events per second each drill posts.", min=1)] = 1500,
    subscribers: Annotated[
        int | None, typer.Option(help="Simulated subscribers per drill (default: the drill's).")
    ] = None,
    settle_timeout: Annotated[
        float, typer.Option(help="Seconds a drill waits for every effect after its load.")
    ] = 180,
    data_dir: Annotated[
        Path | None, typer.Option(help="Keep the stack's data and logs here (default: a temp dir).")
    ] = None,
) -> None:
    """Fault drills on the embedded stack, each counted end to end (docs/faults.md).

    Exits 1 if any drill lost or duplicated anything or left an SMS without a final state.
    """
    from churnwatch.drill import DRILLS, results_table, run, select

    if list_drills:
        for d in DRILLS:
            console.print(
                f"{d.name:<18} {d.description}{'  (short run)' if d.in_short_run else ''}"
            )
        return
    try:
        chosen = select(names or [], short=short)
    except KeyError as exc:
        raise typer.BadParameter(str(exc.args[0])) from exc
    console.print(f"drills      {', '.join(d.name for d in chosen)}")

    def started(stack: Any) -> None:
        console.print(f"stack       up (data and logs in {stack.data_dir})")

    def finished(result: Any) -> None:
        verdict = "[green]pass[/]" if result.passed else "[red]FAIL[/]"
        console.print(f"{result.drill.name:<18} {verdict} in {result.seconds:.0f} s")
        for note in result.notes:
            console.print(f"    {note}")
        if result.error:
            console.print(f"    [red]{result.error}[/]")
        if result.tally is not None and not result.passed:
            console.print(f"    {result.tally}")

    results = run(
        chosen,
        data_dir=data_dir,
        rate=rate,
        settle_timeout_s=settle_timeout,
        subscribers=subscribers,
        on_start=started,
        on_result=finished,
    )
    Console(width=120).print(results_table(results))
    if not all(r.passed for r in results):
        raise typer.Exit(1)
