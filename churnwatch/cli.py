"""The ``churnwatch`` command line: up, migrate, train, sms-gateway, sample, schemas, rules."""

from __future__ import annotations

import typer

from churnwatch.commands import console
from churnwatch.commands.admin import (
    migrate,
    post_sample,
    rules_check,
    schemas,
    sms_gateway,
    train,
)
from churnwatch.commands.drill import drill
from churnwatch.commands.history import backtest, evaluate_table, import_table
from churnwatch.commands.simulate import simulate
from churnwatch.commands.up import up

# The commands are in churnwatch/commands/, one module per job; they are
# registered here, in the order `churnwatch --help` lists them, and their names
# are still importable from here.
__all__ = [
    "app",
    "backtest",
    "console",
    "drill",
    "evaluate_table",
    "import_table",
    "main",
    "migrate",
    "post_sample",
    "rules_app",
    "rules_check",
    "schemas",
    "simulate",
    "sms_gateway",
    "train",
    "up",
]

app = typer.Typer(
    help="churnwatch: churn early warning for telecom operators.",
    no_args_is_help=True,
    add_completion=False,
)

app.command()(up)
app.command()(migrate)
app.command()(train)
app.command("sms-gateway")(sms_gateway)
app.command("sample")(post_sample)
app.command()(schemas)

rules_app = typer.Typer(help="Alerting rules files.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")


def _register_keys() -> None:
    # Imported here, like the other commands' heavy imports, to keep `--help` fast.
    from churnwatch.dlq import dlq_app
    from churnwatch.keys import keys_app
    from churnwatch.people import people_app
    from churnwatch.phonekeys import phone_keys_app

    app.add_typer(keys_app, name="keys")
    app.add_typer(dlq_app, name="dlq")
    app.add_typer(phone_keys_app, name="phone-keys")
    app.add_typer(people_app, name="people")


_register_keys()


rules_app.command("check")(rules_check)
app.command("import-table")(import_table)
app.command()(simulate)
app.command()(backtest)
app.command("evaluate-table")(evaluate_table)
app.command()(drill)


def main() -> None:
    """Console-script entry point."""
    app()
