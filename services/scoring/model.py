"""The churn model: a River pipeline, with an expert prior until it has learned enough.

Until the online model has seen ``SCORING_MIN_LABELS`` labelled examples with
both classes present, scores come from a transparent prior: a logistic score
over the operator's documented warning signs (calls to competitors, falling
usage, complaints, arrears, a pending stop-notice, spend drop). A model that
says 0.5 for everyone until it has data is worse than the operator's
spreadsheet; the prior is what the spreadsheet would say.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass, field
from typing import Any

from river import compose, linear_model, optim, preprocessing

PRIOR_VERSION = "prior-v1"

# (feature, weight, transform, reason template). Weights are log-odds per unit.
_PRIOR_TERMS: list[tuple[str, float, str]] = [
    ("competitor_share_7d", 4.0, "{:.0%} of calls to competitor networks (7 d)"),
    ("complaints_30d", 0.9, "{:.1f} complaints (30 d, decayed)"),
    ("stop_notice_pending", 1.2, "suspension scheduled for unpaid bills"),
    ("arrears_days_capped", 0.03, "{:.0f} days in arrears"),
    ("usage_drop", 1.5, "usage falling: {:.0%} below the 30-day rate"),
    ("spend_drop", 1.0, "latest bill {:.0%} below own average"),
    ("downgrades_90d", 0.8, "plan downgraded recently"),
]
_PRIOR_INTERCEPT = -2.6


@dataclass(frozen=True)
class ModelParams:
    """River pipeline parameters (from settings)."""

    learning_rate: float = 0.05
    l2: float = 0.0
    min_labels: int = 200


def build_model(params: ModelParams) -> compose.Pipeline:
    """StandardScaler | LogisticRegression, the River way."""
    return preprocessing.StandardScaler() | linear_model.LogisticRegression(
        optimizer=optim.SGD(params.learning_rate), l2=params.l2
    )


def _prior_inputs(x: dict[str, float]) -> dict[str, float]:
    return {
        "competitor_share_7d": x["competitor_share_7d"],
        "complaints_30d": x["complaints_30d"],
        "stop_notice_pending": x["stop_notice_pending"],
        "arrears_days_capped": min(x["arrears_days"], 90.0),
        "usage_drop": max(0.0, -x["usage_trend"]),
        "spend_drop": max(0.0, 1.0 - x["bill_ratio"]),
        "downgrades_90d": x["downgrades_90d"],
    }


def prior_score(x: dict[str, float]) -> tuple[float, list[str]]:
    """The expert prior's probability and its reasons, strongest first."""
    inputs = _prior_inputs(x)
    logit = _PRIOR_INTERCEPT
    contributions: list[tuple[float, str]] = []
    for name, weight, template in _PRIOR_TERMS:
        value = inputs[name]
        contribution = weight * value
        logit += contribution
        if contribution >= 0.25:
            contributions.append((contribution, template.format(value)))
    contributions.sort(reverse=True)
    return 1.0 / (1.0 + math.exp(-logit)), [reason for _, reason in contributions[:3]]


@dataclass
class ChurnModel:
    """The online model with its label counts; pickled into ``scoring.model_state``."""

    params: ModelParams
    pipeline: Any = None
    labels_seen: int = 0
    positives_seen: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pipeline is None:
            self.pipeline = build_model(self.params)

    @property
    def trained(self) -> bool:
        """True once enough labels of both classes were learned to trust the model."""
        negatives = self.labels_seen - self.positives_seen
        return (
            self.labels_seen >= self.params.min_labels and min(self.positives_seen, negatives) > 0
        )

    @property
    def version(self) -> str:
        """Which scorer produced a score: the prior, or the online model and its label count."""
        return f"river-lr@{self.labels_seen}" if self.trained else PRIOR_VERSION

    def score(self, x: dict[str, float]) -> tuple[float, list[str]]:
        """Probability of churn within the horizon, with reasons."""
        prior, reasons = prior_score(x)
        if not self.trained:
            return prior, reasons
        proba = float(self.pipeline.predict_proba_one(x).get(True, 0.0))
        return proba, self._reasons(x) or reasons

    def _reasons(self, x: dict[str, float]) -> list[str]:
        # Contribution of each standardised feature to the logit, strongest positive first.
        scaler, lr = self.pipeline["StandardScaler"], self.pipeline["LogisticRegression"]
        scaled = scaler.transform_one(x)
        contributions = sorted(
            ((lr.weights.get(k, 0.0) * v, k) for k, v in scaled.items()), reverse=True
        )
        return [f"{name} high" for c, name in contributions[:3] if c > 0.25]

    def learn(self, x: dict[str, float], churned: bool) -> None:
        """Learn one labelled example."""
        self.pipeline.learn_one(x, churned)
        self.labels_seen += 1
        self.positives_seen += int(churned)

    def dumps(self) -> bytes:
        """Serialise the pipeline (pickle: River models are plain Python objects)."""
        return pickle.dumps(self.pipeline)

    @classmethod
    def loads(cls, params: ModelParams, blob: bytes, labels: int, positives: int) -> ChurnModel:
        """Restore a model saved by ``dumps``. Only our own database is ever unpickled."""
        return cls(params, pickle.loads(blob), labels, positives)  # noqa: S301
