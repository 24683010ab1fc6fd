"""Does the model warn well? Prequential ROC AUC on a generated population, and train.

The population (``churnwatch.synth``) gives churners the documented warning signs
over the 30-40 days before they leave, so a 30-day horizon can see them. The
engine is the service's own code; only Kafka and the database are left out.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest

from churnwatch.backtest import Result, run_backtest
from churnwatch.evaluation.figures import day_points
from churnwatch.evaluation.stats import roc_auc
from churnwatch.simulator import Simulation, SimulationConfig
from churnwatch.synth import generate, write_ndjson
from services.scoring.batch import run_in_memory
from services.scoring.model import TRUST_BAND, ChurnModel, ModelParams
from services.scoring.quality import Quality
from services.scoring.scorer import Scorer
from services.scoring.settings import ScoringSettings
from shared.events import parse_event
from tests.conftest import REPO, Stack


@pytest.fixture(scope="module")
def four_months(tmp_path_factory: pytest.TempPathFactory) -> Result:
    """1,000 subscribers over 120 days replayed by ``churnwatch backtest``'s own code,
    with the shipped settings."""
    population = generate(subscribers=1000, days=120, seed=11, warning_days=(30, 40))
    path = tmp_path_factory.mktemp("quality") / "history.ndjson"
    write_ndjson(population, path)
    return run_backtest([path])


def test_served_scores_rank_each_day_with_roc_auc_at_least_0_8(four_months: Result) -> None:
    """The served score, as an account manager meets it: each day's alive subscribers
    ranked by their latest score, against who churns within the horizon (the AUC
    within each scoring day, averaged). Not pooled over weeks: before the horizon's
    labels mature the score's level follows the churn rate seen so far, which moves
    every score of a day together and says nothing about the ranking."""
    per_day = [roc_auc(points.y, points.p) for points in day_points(four_months).values()]
    ranked = [auc for auc in per_day if auc is not None]
    assert len(ranked) >= 60, len(per_day)
    assert sum(ranked) / len(ranked) >= 0.8, ranked
    model = four_months.model
    assert model is not None
    assert model.labels_seen > 10_000 and model.positives_seen > 500


def test_the_model_takes_over_from_the_prior(four_months: Result) -> None:
    """Once non-churns are learnt from their horizon labels, the model ranks them at
    least as well as the operator's rules and carries the score."""
    model = four_months.model
    assert model is not None and model.quality is not None
    assert model.weight > 0.5, model.quality.summary()


def test_a_fresh_install_learns_both_classes_within_its_first_week() -> None:
    """Default settings, a simulated operator from its first event: by day 7 the
    model has learnt churns and non-churns (step labels), not only the prior."""
    settings = ScoringSettings()
    sim = Simulation(
        SimulationConfig(subscribers=600, days=14, seed=5, churn_rate=0.2, churn_from_day=1)
    )
    events = [parse_event(e) for e in sim.events()]
    first = min(e.occurred_at for e in events)
    week = [e for e in events if e.occurred_at < first + timedelta(days=7)]
    assert len(week) < len(events)  # the simulation runs on past the week
    scorer = Scorer(settings.engine_params(), ChurnModel(settings.model_params()))
    run_in_memory(scorer, week, batch_size=settings.scoring_batch_max_records)
    model = scorer.model
    assert model.positives_seen > 0, (model.labels_seen, model.positives_seen)
    assert model.labels_seen - model.positives_seen > 0


def test_a_weak_model_hands_the_score_back_to_the_prior() -> None:
    model = ChurnModel(ModelParams(min_labels=10))
    assert model.quality is not None
    x = {"competitor_share_7d": 0.0}
    for i in range(300):  # the prior ranks perfectly, the model backwards
        churned = i % 5 == 0
        prior, learned = (0.9, 0.1) if churned else (0.1, 0.9)
        model.learn(x, churned, 0.5, (prior, learned))
    assert model.quality.prior_lead() == pytest.approx(1.0)
    assert model.weight == 0.0


def test_a_model_level_with_the_prior_serves_in_full() -> None:
    """Level with the prior, the model (the prior plus what it learnt) carries the
    score; behind it, it hands the score back over ``TRUST_BAND`` of AUC."""
    model = ChurnModel(ModelParams(min_labels=10))
    assert model.quality is not None
    x = {"competitor_share_7d": 0.0}
    for i in range(300):  # both components rank alike
        churned = i % 5 == 0
        both = 0.8 if churned else (0.3 if i % 3 else 0.6)
        model.learn(x, churned, 0.5, (both, both))
    assert model.quality.prior_lead() == pytest.approx(0.0)
    assert model.weight == pytest.approx(1.0)
    for lead, weight in ((-0.1, 1.0), (TRUST_BAND / 2, 0.5), (TRUST_BAND, 0.0), (0.3, 0.0)):
        judged = ChurnModel(ModelParams(min_labels=10), quality=_Lead(lead))
        judged.labels_seen, judged.positives_seen = 300, 60
        assert judged.weight == pytest.approx(weight), lead


class _Lead(Quality):
    """Quality whose prior's lead is given: the weight's rule alone."""

    def __init__(self, lead: float) -> None:
        super().__init__()
        self.lead = lead

    def prior_lead(self) -> float | None:
        return self.lead


def test_a_window_of_a_handful_of_churns_does_not_decide_the_weight() -> None:
    """At the end of a replay every pending non-churn resolves at once: a window
    with a few churns says nothing about which component ranks better."""
    model = ChurnModel(ModelParams(min_labels=200, quality_window=80))  # compared over 400
    assert model.quality is not None
    x = {"competitor_share_7d": 0.0}
    for i in range(400):  # both rank well, the model better: it serves
        churned = i % 4 == 0
        prior, learned = (0.6, 0.9) if churned else ((0.7, 0.1) if i % 8 == 1 else (0.1, 0.1))
        model.learn(x, churned, 0.5, (prior, learned))
    decided = model.quality.prior_lead()
    assert decided is not None and decided < 0.0  # the model ranks better
    weight = model.weight
    assert weight > 0.5, model.quality.summary()
    for _ in range(390):  # then non-churns only, where the model is backwards
        model.learn(x, False, 0.5, (0.1, 0.9))
    for _ in range(10):  # and a few churns
        model.learn(x, True, 0.5, (0.9, 0.1))
    assert sum(model.quality.component_recent) == 10
    assert model.quality.prior_lead() == decided  # the last decisive window stands
    assert model.weight == weight
    assert pickle.loads(pickle.dumps(model.quality)).prior_lead() == decided  # noqa: S301


def test_train_warm_starts_a_checkpoint_from_a_history_file(stack: Stack, tmp_path: Path) -> None:
    population = generate(subscribers=150, days=75, seed=3, warning_days=(30, 40))
    history = tmp_path / "history.ndjson"
    write_ndjson(population, history)
    name = f"train-{uuid.uuid4().hex[:8]}"
    environ = {
        **os.environ,
        "DATABASE_URL": stack.database_url,
        "SCORING_MODEL_NAME": name,
        "PYTHONPATH": str(REPO),
    }
    done = subprocess.run(
        [sys.executable, "-m", "churnwatch", "train", str(history)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    assert "labels" in done.stderr + done.stdout
    # Read the checkpoint back the way a starting scoring replica does.
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            (
                "import asyncio,sys\n"
                "from services.scoring import service\n"
                "from services.scoring.settings import ScoringSettings\n"
                "from shared.db import create_engine\n"
                "async def main():\n"
                "    s=ScoringSettings(); e=create_engine(s)\n"
                "    async with e.connect() as c:\n"
                "        m=await service.load_model(c,name=s.scoring_model_name,"
                "params=s.model_params())\n"
                "    await e.dispose(); print(m.labels_seen, m.positives_seen, m.checkpoint_id)\n"
                "asyncio.run(main())\n"
            ),
        ],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    labels, positives, checkpoint = check.stdout.split()
    assert int(labels) > 1000 and int(positives) > 0 and checkpoint != "None"
