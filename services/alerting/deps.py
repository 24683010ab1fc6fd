"""What alerting's routes take from the app: one accessor each, and its dependency.

Routes take the ``Annotated`` aliases as parameters (``engine: EngineDep``), as
fastapi/full-stack-fastapi-template's ``SessionDep``, rather than reaching into
``request.app.state`` themselves; ``create_app`` stores what they return. Each
reads ``request.app.state`` on every request: what is there may be replaced
while the app runs (tests swap the engine).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from services.alerting.rules import RulesFile
from shared.deps import EngineDep as EngineDep
from shared.deps import on_loop


def get_rules(request: Request) -> RulesFile:
    """The rules alerting runs with, as loaded when the app was built."""
    rules: RulesFile = request.app.state.rules
    return rules


def get_rules_source(request: Request) -> Path:
    """The file the rules were loaded from (``ALERTING_RULES_FILE``, else the default)."""
    source: Path = request.app.state.rules_source
    return source


RulesDep = Annotated[RulesFile, Depends(on_loop(get_rules))]
"""A route's parameter for :func:`get_rules`."""
RulesSourceDep = Annotated[Path, Depends(on_loop(get_rules_source))]
"""A route's parameter for :func:`get_rules_source`."""
