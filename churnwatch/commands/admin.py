"""Small commands: migrate, train, sms-gateway, sample, schemas and rules check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import httpx
import typer

from churnwatch.commands import console


def migrate() -> None:
    """Apply the database migrations to DATABASE_URL."""
    from churnwatch.migrate import upgrade
    from shared.settings import BaseServiceSettings

    upgrade(BaseServiceSettings().database_url)
    console.print("migrated to head")


def train(
    file: Annotated[Path, typer.Argument(help="NDJSON history of events (our contract).")],
    batch_size: Annotated[int, typer.Option(help="Events per engine batch.")] = 500,
) -> None:
    """Warm-start the scoring model from a history file, through the same engine code.

    Events are replayed in time order through the features, labels and model the
    service uses (in memory), and the model is stored as a new checkpoint that
    scoring replicas resume from (SCORING_MODEL_NAME, SCORING_MODEL).
    """
    import asyncio
    from datetime import UTC, datetime

    import orjson

    from services.scoring import service
    from services.scoring.batch import run_in_memory
    from services.scoring.scorer import Scorer
    from services.scoring.settings import ScoringSettings
    from shared.db import create_engine
    from shared.events import parse_event

    settings = ScoringSettings()
    events = []
    with file.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    events.append(parse_event(orjson.loads(line)))
                except ValueError as exc:
                    console.print(f"[red]{file}:{number}: {exc}[/]")
                    raise typer.Exit(2) from exc
    events.sort(key=lambda e: e.occurred_at)

    async def _train() -> None:
        engine = create_engine(settings)
        try:
            async with engine.connect() as conn:
                model = await service.load_model(
                    conn, name=settings.scoring_model_name, params=settings.model_params()
                )
            scorer = Scorer(settings.engine_params(), model)
            states = run_in_memory(scorer, events, batch_size=batch_size)
            async with engine.begin() as conn:
                checkpoint = await service.save_checkpoint(
                    conn,
                    name=settings.scoring_model_name,
                    model=scorer.model,
                    now=datetime.now(UTC),
                    keep=settings.scoring_checkpoints_kept,
                )
        finally:
            await engine.dispose()
        quality = scorer.model.quality.summary() if scorer.model.quality else {}
        console.print(
            f"trained on {len(events)} events of {len(states)} subscribers: "
            f"{scorer.model.labels_seen} labels ({scorer.model.positives_seen} churn), "
            f"ROC AUC {quality.get('roc_auc')}, checkpoint {checkpoint}"
        )

    asyncio.run(_train())


def sms_gateway() -> None:
    """Run the SMS provider stand-in (records messages; never sends a real SMS)."""
    import uvicorn

    from churnwatch.gateway import GatewaySettings, create_gateway_app
    from shared.logging import configure_logging

    settings = GatewaySettings()
    configure_logging(settings.log_level, json=settings.log_json, service="sms-gateway")
    uvicorn.run(
        create_gateway_app(settings),
        host=settings.host,
        port=settings.sms_gateway_port,
        log_config=None,
        access_log=False,
    )


def post_sample(
    ingest_url: Annotated[str, typer.Option(help="Ingest base URL.")] = "http://127.0.0.1:8081",
    api_key: Annotated[
        str | None, typer.Option(envvar="CHURNWATCH_API_KEY", help="API key (events:write).")
    ] = None,
) -> None:
    """Post the built-in sample events to ingest."""
    from churnwatch.keys import api_headers
    from churnwatch.sample import sample_events

    response = httpx.post(
        ingest_url + "/v1/events", json=sample_events(), timeout=30, headers=api_headers(api_key)
    )
    console.print(response.status_code, response.json())


def schemas(
    out: Annotated[Path, typer.Option(help="Directory for the JSON Schema files.")] = Path(
        "docs/schemas"
    ),
) -> None:
    """Write the JSON Schema of every event type to OUT/<type>.json."""
    from shared.events import json_schemas

    out.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (out / f"{name}.json").write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
    console.print(f"wrote {len(json_schemas())} schemas to {out}")


def rules_check(
    file: Annotated[
        Path | None,
        typer.Argument(help="The rules file (YAML); omitted checks the shipped default."),
    ] = None,
) -> None:
    """Validate a rules file without starting anything; exit 1 naming each bad line."""
    from services.alerting.rules import DEFAULT_RULES_FILE, RulesError, load_rules

    try:
        rules = load_rules(file)
    except RulesError as exc:
        console.print(f"[red]invalid[/red]\n{exc}", markup=True, highlight=False)
        raise typer.Exit(1) from None
    names = ", ".join(r.name for r in rules.rules)
    console.print(f"{file or DEFAULT_RULES_FILE}: ok, {len(rules.rules)} rules ({names})")
