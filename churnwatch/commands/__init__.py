"""The commands of the ``churnwatch`` command line, one module per job.

:mod:`churnwatch.cli` makes the typer app and registers these functions on it
(the order there is the order ``churnwatch --help`` lists them):

- :mod:`~churnwatch.commands.up`: ``up``, the whole stack (and feeding it the
  sample or a simulation);
- :mod:`~churnwatch.commands.admin`: ``migrate``, ``train``, ``sms-gateway``,
  ``sample``, ``schemas`` and ``rules check``;
- :mod:`~churnwatch.commands.simulate`: ``simulate``;
- :mod:`~churnwatch.commands.history`: ``import-table``, ``backtest`` and
  ``evaluate-table``, on history files and tables;
- :mod:`~churnwatch.commands.drill`: ``drill``.

The ``keys``, ``dlq``, ``phone-keys`` and ``people`` groups are typer apps of
their own (churnwatch.keys, .dlq, .phonekeys, .people). Every command prints
through :data:`console`.
"""

from __future__ import annotations

from rich.console import Console

console = Console(stderr=True, soft_wrap=True)
"""Where the commands print: stderr (stdout is for data, e.g. ``simulate --out -``)."""
