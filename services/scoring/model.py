"""The churn model: a River pipeline blended with an expert prior, calibrated, explained.

Until the online model has learned ``min_labels`` labelled examples (with both
classes), its weight in the score grows linearly from 0 to 1; the rest comes
from a transparent prior: a logistic score over the operator's documented
warning signs (competitor calls, falling usage, complaints, arrears, a pending
stop-notice, spend drop, downgrades, late payments, inactivity). A fresh
install gives useful scores from the first event, and a model that has seen
enough real outcomes takes over.

The pipeline learns labels of a short step (``SCORING_LABEL_STEP_DAYS``, 3 days
by default: "churned within 3 days of the snapshot"), which resolve within days
of a fresh install instead of a horizon later; its step probability ``q`` becomes
the horizon's probability as ``1 - (1 - q) ** (horizon / step)`` (a discrete-time
hazard held for the horizon). The prior's own log-odds is one of the pipeline's
inputs, so the model starts from the operator's rules and learns what to add.
The served score is then calibrated against the horizon's own labels when they
resolve (``Calibrator``: Platt scaling learnt online), so it means "probability
of churn within the horizon" (docs/scoring.md explains why this is sound).

Reasons are the model's own contributions: for the linear model, weight x
scaled value; for tree models, how much the probability falls when a feature
is set to its running mean. Prior and model contributions are blended with the
same weight as the scores.
"""

from __future__ import annotations

import bisect
import heapq
import math
import pickle
from dataclasses import dataclass, field
from typing import Any

from river import preprocessing

from services.scoring.calibration import Calibrator
from services.scoring.calibration import logit as _logit
from services.scoring.features import CATEGORIES, CATEGORY_PREFIX, FEATURE_NAMES, FEATURES

# Re-exported: callers import them from here, and checkpoints pickled before the
# pipeline had its own module name its steps as ``services.scoring.model.<name>``.
from services.scoring.pipeline import (
    _ZERO_BIN,
    BIN_EDGES,
    DEFAULT_LEARNING_RATE,
    PAIRED,
    PAIRED_ORDER,
    PRIOR_INPUT,
    ModelKind,
    ModelParams,
    _bin_key,
    _linear_parts,
    _pair_plan,
    _with_prior,
    binned,
    binned_pairs,
    build_model,
    clip_scaled,
    numbers_only,
    passed_through,
)
from services.scoring.prior import (
    _PRIOR_HIGH,
    PRIOR_VERSION,
    prior_contributions,
    prior_score,
)
from services.scoring.quality import Quality

__all__ = [
    "BIN_EDGES",
    "DEFAULT_LEARNING_RATE",
    "PAIRED",
    "PAIRED_ORDER",
    "PRIOR_INPUT",
    "PRIOR_VERSION",
    "TRUST_BAND",
    "ChurnModel",
    "ModelKind",
    "ModelParams",
    "Reason",
    "Settled",
    "binned",
    "binned_pairs",
    "build_model",
    "clip_scaled",
    "numbers_only",
    "passed_through",
    "prior_contributions",
    "prior_score",
]

# The model's share goes from 1 (its AUC at least the prior's) to 0 (the prior's ahead
# by this much); half at half of it. Wide enough that the comparison's own noise does
# not decide: on make run's stream the lead at the end moved from -0.012 to 0.027
# over seven identical runs, so the prior takes half the score back only past 0.03.
TRUST_BAND = 0.06


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a score is high: a stable code, English and Chinese text, and its weight."""

    code: str
    text_en: str
    text_zh: str
    contribution: float


@dataclass
class ChurnModel:
    """The online model, its label counts and its prequential quality."""

    params: ModelParams
    pipeline: Any = None
    labels_seen: int = 0
    positives_seen: int = 0
    stats: Any = None  # running mean/variance of every feature, for reasons
    quality: Quality | None = None
    checkpoint_id: int | None = None
    calibrator: Calibrator = field(default=None)  # type: ignore[assignment]
    # Horizon labels waiting to mature: (matures_at, sequence, label), and the clock.
    waiting: list[tuple[float, int, Settled]] = field(default_factory=list)
    clock: float = -math.inf
    _sequence: int = 0
    # When the first horizon label matured (model clock): from then on non-churns
    # are learnt from their horizon labels, not three days after their snapshot.
    horizon_labels_since: float | None = None
    # (labels_seen, quality.resolved) -> weight: the weight changes only when a label
    # is learned, and computing it costs two rolling ROC AUCs (profiled: 9% of scoring).
    _weight_at: tuple[int, int, float] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.pipeline is None:
            self.pipeline = build_model(self.params)
        if self.stats is None:
            self.stats = preprocessing.StandardScaler()
        p = self.params
        if self.quality is None:
            self.quality = Quality(p.quality_window, p.top_fraction, p.drift_delta, p.min_labels)
        if self.calibrator is None:
            self.calibrator = Calibrator(min_labels=p.calibration_min_labels)

    @property
    def weight(self) -> float:
        """The model's share of the score (the prior has the rest).

        Champion/challenger: the model serves only once its recent prequential
        ROC AUC is known and at least the prior's, so a model that has not yet
        proven itself (too few labels, one class only, or labels still skewed by
        their delays: churns resolve at once, non-churns a horizon later) never
        makes the scores worse than the operator's own rules. Level with the
        prior it serves in full: it is the prior plus what it learned (the
        prior's log-odds is its input, starting at weight 1), and its scores
        follow the operator's own labels. Behind the prior it hands the score
        back smoothly, to nothing at ``TRUST_BAND`` of AUC; its share grows with
        the labels learned up to ``min_labels``.
        """
        resolved = self.quality.resolved if self.quality is not None else 0
        cached = self._weight_at
        if cached is not None and cached[0] == self.labels_seen and cached[1] == resolved:
            return cached[2]
        weight = self._compute_weight()
        self._weight_at = (self.labels_seen, resolved, weight)
        return weight

    def _compute_weight(self) -> float:
        negatives = self.labels_seen - self.positives_seen
        if min(self.positives_seen, negatives) == 0:
            return 0.0
        ramp = min(1.0, self.labels_seen / self.params.min_labels)
        gap = self.quality.prior_lead() if self.quality is not None else None
        if gap is None:
            return 0.0
        # Full at a tie, nothing at TRUST_BAND: why, beside the constant.
        trust = max(0.0, min(1.0, 1.0 - gap / TRUST_BAND))
        return ramp * trust

    @property
    def version(self) -> str:
        """Which scorer produced a score: the prior, or the model kind and its label count."""
        if self.weight == 0.0:
            return PRIOR_VERSION
        return f"{self.params.kind}@{self.labels_seen}"

    def _model_proba(self, x: dict[str, float], prior: float | None = None) -> float:
        """The model's probability of churn within the horizon (``prior``: if known).

        The pipeline learnt every snapshot as a non-churn and each churn again as a
        churn (``observe``/``confirm``), so it estimates q = p / (1 + p), and
        p = q / (1 - q): the fake-negative correction of delayed-feedback learning.
        """
        q = float(self.pipeline.predict_proba_one(_with_prior(x, prior)).get(True, 0.0))
        return min(1.0 - 1e-6, q / (1.0 - q)) if q < 1.0 else 1.0 - 1e-6

    def components(self, x: dict[str, float]) -> tuple[float, float | None]:
        """The prior's and (once it has learned anything) the model's horizon probabilities."""
        prior = prior_score(x)
        if not self.labels_seen:
            return prior, None
        return prior, self._model_proba(x, prior)

    def mix(self, prior: float, model: float | None) -> float:
        """The two components' weighted mix, before calibration."""
        w = self.weight
        return prior if model is None or w == 0.0 else (1 - w) * prior + w * model

    def blend(self, prior: float, model: float | None, *, history_days: float = math.inf) -> float:
        """The served score from the two components: their weighted mix, calibrated.

        ``history_days``: how long the service has seen the subscriber (default:
        long enough not to matter).
        """
        return self.calibrator(self.mix(prior, model), history_days)

    def score(self, x: dict[str, float]) -> float:
        """Probability of churn within the horizon."""
        return self.blend(*self.components(x))

    def contributions(self, x: dict[str, float]) -> dict[str, float]:
        """Every feature's contribution to the served log-odds (prior and model, blended)."""
        w = self.weight
        contributions = dict.fromkeys(FEATURE_NAMES, 0.0)
        if w < 1.0:
            for name, c in prior_contributions(x).items():
                contributions[name] += (1 - w) * c
        if w > 0.0:
            for name, c in self._model_contributions(x).items():
                contributions[name] = contributions.get(name, 0.0) + w * c
        return contributions

    def explain(self, x: dict[str, float], top: int = 3) -> list[Reason]:
        """The top reasons behind the score, from the prior's and the model's contributions."""
        contributions = self.contributions(x)
        means = self.stats.means if self.labels_seen else {}
        reasons = []
        for name, c in sorted(contributions.items(), key=lambda kv: kv[1], reverse=True)[:top]:
            if c <= 0.05:
                break
            if name.startswith(CATEGORY_PREFIX):
                reasons.append(_category_reason(name, round(c, 4)))
                continue
            feature = FEATURES[name]
            # Prior terms point in the risk direction by construction; model terms
            # say "up" or "down" by where the value sits against the running mean.
            mean = means.get(name)
            high = _PRIOR_HIGH.get(name, True) if mean is None else x.get(name, 0.0) >= mean
            code, en, zh = feature.up if high else feature.down
            reasons.append(Reason(code, en, zh, round(c, 4)))
        return reasons

    def _model_contributions(self, x: dict[str, float]) -> dict[str, float]:
        """The pipeline's contributions, its prior input's shared out among the prior's terms."""
        out = self._pipeline_contributions(_with_prior(x))
        via_prior = out.pop(PRIOR_INPUT, 0.0)
        terms = prior_contributions(x)
        if self.params.kind in ("gam", "ga2m", "logreg"):
            # The prior's log-odds is an input with a learnt weight: each of its
            # terms contributes that weight times its own contribution.
            prior_weight = _linear_parts(self.pipeline)[1].weights.get(PRIOR_INPUT, 0.0)
            for name, c in terms.items():
                out[name] = out.get(name, 0.0) + prior_weight * c
        elif via_prior:
            # A tree's probe of the prior input: shared out by the terms' sizes.
            sizes = {k: abs(v) for k, v in terms.items() if v}
            total = sum(sizes.values())
            for name, size in sizes.items():
                out[name] = out.get(name, 0.0) + via_prior * size / total
        return out

    def _pipeline_contributions(self, x: dict[str, float]) -> dict[str, float]:
        if self.params.kind in ("gam", "ga2m", "logreg"):
            scaler, lr = _linear_parts(self.pipeline)
            w = lr.weights
            scaled = scaler.transform_one(x)
            scaled.pop(PRIOR_INPUT, None)
            if self.params.kind == "logreg":
                scaled = clip_scaled(scaled)  # as the prediction sees it
                return {k: w.get(k, 0.0) * v for k, v in scaled.items()}
            # gam: the feature's term (slope and step) against the term at its mean
            # (z = 0), so an ordinary value contributes nothing whatever its bin weight.
            clipped = binned(scaled)
            names = tuple(sorted(k for k in scaled if k in x))
            paired = tuple(k for k in names if k in PAIRED)
            out = {}
            for k in names:
                z = clipped.get(k, 0.0)
                step = _bin_key(k, bisect.bisect_left(BIN_EDGES, z))
                out[k] = w.get(k, 0.0) * z + w.get(step, 0.0) - w.get(_bin_key(k, _ZERO_BIN), 0.0)
            if self.params.kind == "ga2m":
                # A pair's term (0 when either is at its mean) is split between the two.
                for i, j, key in _pair_plan(paired):
                    half = (
                        0.5
                        * w.get(key, 0.0)
                        * clipped.get(paired[i], 0.0)
                        * clipped.get(paired[j], 0.0)
                    )
                    out[paired[i]] += half
                    out[paired[j]] += half
            for key, value in x.items():
                if key.startswith(CATEGORY_PREFIX):
                    out[key] = w.get(key, 0.0) * value
            return out
        # Trees: how far the probability falls (in log-odds) when the feature is set to
        # its mean. Only the most unusual features are probed: each costs a prediction.
        base = _logit(self._model_proba(x))
        z = self.stats.transform_one(x)
        probes = sorted(z, key=lambda k: abs(z[k]), reverse=True)[:6]
        out = {}
        for name in probes:
            probe = dict(x)
            probe[name] = self.stats.means.get(name, 0.0)
            out[name] = base - _logit(self._model_proba(probe))
        return out

    def learn(
        self,
        x: dict[str, float],
        churned: bool,
        predicted: float | None = None,
        components: tuple[float, float | None] | None = None,
    ) -> None:
        """Learn one example whose horizon label is known: ``judge``, ``observe``, ``confirm``."""
        self.judge(churned, predicted, components)
        self.observe(x)
        if churned:
            self.confirm(x)

    def judge(
        self,
        churned: bool,
        predicted: float | None,
        components: tuple[float, float | None] | None,
    ) -> None:
        """Score a prediction against its horizon label: the quality behind the weight.

        ``predicted`` (the score served before the label was known) and its
        ``components`` (prior, model) feed the prequential quality.
        """
        if predicted is not None and self.quality is not None:
            self.quality.update(predicted, churned, components)

    def observe(self, x: dict[str, float]) -> None:
        """Learn a snapshot as a non-churn, once its step has passed (or it churned).

        Delayed feedback the way click-through models learn conversions (the
        "fake negative" scheme): every snapshot is learnt as a non-churn as soon
        as its step has passed, and learnt again as a churn (``confirm``) if the
        subscriber churns within the horizon. Both classes come within days of a
        fresh install, no label waits a horizon, and the model's estimate q of
        that mix is p / (1 + p) of the churn probability p (``_model_proba``).
        """
        self.pipeline.learn_one(_with_prior(x), False)
        self.stats.learn_one(x)
        self.labels_seen += 1

    def confirm(self, x: dict[str, float]) -> None:
        """Learn a snapshot again as a churn: its subscriber churned within the horizon."""
        self.pipeline.learn_one(_with_prior(x), True)
        self.positives_seen += 1

    def settle(self, snapshot: Settled, *, matures_at: float) -> None:
        """Take one horizon label (churned within the horizon or not) for judging and calibrating.

        It waits until it has **matured** (``matures_at``: when a non-churn label
        of the same snapshot would have resolved), then feeds the prequential
        quality (the served score and both components: the champion/challenger
        rule, ``judge``) and the calibration (the blend before calibration).
        Churn labels resolve at once and non-churn ones a horizon later: taken as
        they come, the first horizon after a fresh install would hold churns only.
        """
        self._sequence += 1
        heapq.heappush(self.waiting, (matures_at, self._sequence, snapshot))
        self._release()

    def advance(self, now: float) -> None:
        """Move the model's clock (event time): matured horizon labels are taken."""
        if now > self.clock:
            self.clock = now
            self._release()

    @property
    def learns_horizon_labels(self) -> bool:
        """Whether non-churns are learnt from their horizon labels (``settle``) by now.

        Until the first horizon label matures, a fresh install has no other
        non-churn to learn from than the step's: every snapshot whose step has
        passed is learnt as a non-churn (``observe``) and again as a churn if
        its subscriber churns (``confirm``). That is unbiased on average but
        pushes a churner-to-be's warning signs down every day of their warning
        weeks until the churn; once horizon labels mature, a non-churn is learnt
        when it is known to be one (docs/scoring.md, "Labels").
        """
        return self.horizon_labels_since is not None

    def _release(self) -> None:
        while self.waiting and self.waiting[0][0] <= self.clock:
            settled = heapq.heappop(self.waiting)[2]
            if self.horizon_labels_since is None:
                self.horizon_labels_since = self.clock
            self.judge(settled.churned, settled.predicted, settled.components)
            if settled.raw is not None:
                self.calibrator.learn(settled.raw, settled.churned, settled.history_days)

    def dumps(self) -> bytes:
        """Serialise everything learned (River models are plain Python objects)."""
        return pickle.dumps(
            {
                "pipeline": self.pipeline,
                "stats": self.stats,
                "quality": self.quality,
                "labels_seen": self.labels_seen,
                "positives_seen": self.positives_seen,
                "calibrator": self.calibrator,
                "waiting": self.waiting,
                "clock": self.clock,
                "sequence": self._sequence,
                "horizon_labels_since": self.horizon_labels_since,
            }
        )

    @classmethod
    def loads(
        cls, params: ModelParams, blob: bytes, checkpoint_id: int | None = None
    ) -> ChurnModel:
        """Restore a model saved by ``dumps``. Only our own database is ever unpickled."""
        data = pickle.loads(blob)  # noqa: S301
        return cls(
            params,
            data["pipeline"],
            data["labels_seen"],
            data["positives_seen"],
            data["stats"],
            data["quality"],
            checkpoint_id,
            # Checkpoints from before calibration: a fresh (identity) calibrator.
            calibrator=data.get("calibrator"),
            waiting=data.get("waiting", []),
            clock=data.get("clock", -math.inf),
            _sequence=data.get("sequence", 0),
            horizon_labels_since=data.get("horizon_labels_since"),
        )


def _category_reason(key: str, contribution: float) -> Reason:
    """The reason for a category input ``cat:<field>=<value>``: "contract: month_to_month"."""
    field, _, value = key[len(CATEGORY_PREFIX) :].partition("=")
    en, zh = CATEGORIES.get(field, (field.removeprefix("attr_").replace("_", " "),) * 2)
    code = f"PROFILE_{field.upper()}"[:64]
    return Reason(code, f"{en}: {value}", f"{zh}\uff1a{value}", contribution)  # full-width colon


@dataclass(frozen=True, slots=True)
class Settled:
    """A snapshot's horizon label with what was served for it, waiting to mature."""

    churned: bool
    predicted: float  # the score served
    components: tuple[float, float | None]  # its prior's and model's probabilities
    raw: float | None  # the blend before calibration (None: an older snapshot)
    history_days: float  # how much of the subscriber the service had seen then
