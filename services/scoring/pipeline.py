"""The River pipeline behind the online model: its parameters, inputs and features.

``build_model`` composes it with ``|``; the module-level functions are the
pipeline's ``FuncTransformer`` steps (module-level so the pipeline pickles,
and re-exported by ``services.scoring.model``, where checkpoints written
before this module existed look them up).
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass
from typing import Any, Literal

from river import compose, forest, linear_model, optim, preprocessing, tree

from services.scoring.calibration import logit as _logit
from services.scoring.features import FEATURE_NAMES
from services.scoring.prior import prior_score

ModelKind = Literal["gam", "ga2m", "logreg", "hat", "arf"]


@dataclass(frozen=True)
class ModelParams:
    """The River pipeline's parameters (from settings)."""

    kind: ModelKind = "ga2m"
    learning_rate: float | None = None  # None: the kind's default (DEFAULT_LEARNING_RATE)
    l2: float = 0.001
    min_labels: int = 200
    seed: int = 42
    quality_window: int = 2000
    top_fraction: float = 0.1
    drift_delta: float = 0.002
    # The calibrator serves once it has this many matured horizon labels of both classes.
    calibration_min_labels: int = 200


# Each kind's learning rate when SCORING_LEARNING_RATE is not set: AdaGrad's for
# ``gam`` (per-weight steps, so rare bins learn as fast as common ones), SGD's for ``logreg``.
DEFAULT_LEARNING_RATE: dict[str, float] = {"gam": 0.04, "ga2m": 0.04, "logreg": 0.005}

PAIRED: frozenset[str] = frozenset(
    (
        # the warning signs and who the subscriber is
        "competitor_share_7d",
        "competitor_share_change",
        "complaints_30d",
        "stop_notice_pending",
        "arrears_days",
        "voice_trend",
        "spend_drop",
        "days_since_activity",
        "tenure_days",
        "log_monthly_value",
        "calls_7d",
        "voice_min_7d",
        # version 2: interactions known to matter (an international plan with many
        # international minutes or few calls; care contacts with high day usage)
        "plan_international",
        "intl_min_7d",
        "intl_calls_7d",
        "day_min_7d",
        "care_contacts_30d",
    )
)
"""Features ``ga2m`` multiplies in pairs (136 pairs); the others get bins only. The
cost of a prediction grows with the square of their number, so only these."""
PAIRED_ORDER: tuple[str, ...] = tuple(sorted(PAIRED))

# Bin edges of a standardised value for ``gam``: quarter-sigma steps from -2 to +2.5.
# Fine enough for a threshold ("four or more service calls"), coarse enough that
# every bin of a feature fills within a few hundred labels.
BIN_EDGES: tuple[float, ...] = tuple(i / 4 for i in range(-8, 11))
_ZERO_BIN = bisect.bisect_left(BIN_EDGES, 0.0)


def build_model(params: ModelParams) -> compose.Pipeline:
    """The configured River pipeline, composed with ``|``.

    ``gam``: StandardScaler | per-feature bins | LogisticRegression (AdaGrad): a
    generalised additive model, each feature's effect a step function learnt
    online (thresholds, U shapes), still exact reasons.
    ``ga2m``: ``gam`` plus the product of every pair of standardised values, so
    two signs together can weigh more (or less) than each alone; about five
    times the cost of ``gam`` per prediction. The default.
    ``logreg``: StandardScaler | LogisticRegression (SGD): one slope per feature.
    ``hat``: Hoeffding Adaptive Tree (handles non-linear, adapts to drift).
    ``arf``: Adaptive Random Forest (strongest on paper, slowest).
    """
    lr = params.learning_rate or DEFAULT_LEARNING_RATE.get(params.kind, 0.0)
    if params.kind in ("gam", "ga2m", "logreg"):
        optimizer: optim.base.Optimizer
        if params.kind == "logreg":
            # Clipping scaled values at +-3 sigma keeps a rare extreme (a first day of
            # arrears, a huge bill) from throwing the SGD weights around.
            expand, optimizer = clip_scaled, optim.SGD(lr)
        else:
            expand = binned if params.kind == "gam" else binned_pairs
            optimizer = optim.AdaGrad(lr)
        regression = linear_model.LogisticRegression(optimizer=optimizer, l2=params.l2)
        # The prior's log-odds goes in as it is, with a starting weight of 1: the
        # model starts as the prior (an offset, as a boosting model's base margin)
        # and learns what to add to it, instead of learning the prior again from
        # a few hundred churns. River has no offset; a first weight is the same.
        regression._weights[PRIOR_INPUT] = 1.0
        features = compose.FuncTransformer(numbers_only) | preprocessing.StandardScaler()
        pipeline: compose.Pipeline = (
            (features | compose.FuncTransformer(expand)) + compose.FuncTransformer(passed_through)
        ) | regression
        return pipeline
    if params.kind == "hat":
        return preprocessing.StandardScaler() | tree.HoeffdingAdaptiveTreeClassifier(
            grace_period=50, seed=params.seed
        )
    if params.kind == "arf":
        return preprocessing.StandardScaler() | forest.ARFClassifier(n_models=10, seed=params.seed)
    raise ValueError(f"unknown model kind {params.kind!r}")


@functools.cache
def _bin_key(name: str, step: int) -> str:
    return f"{name}#{step}"


@functools.cache
def _pair_plan(names: tuple[str, ...]) -> tuple[tuple[int, int, str], ...]:
    """(i, j, "a*b") for every pair of ``names`` (sorted), built once per feature set."""
    return tuple(
        (i, j, f"{a}*{b}") for i, a in enumerate(names) for j, b in enumerate(names) if i < j
    )


def binned(x: dict[str, float]) -> dict[str, float]:
    """Each standardised value clipped to [-3, 3], plus a one-hot of its bin.

    ``name`` keeps the slope, ``name#k`` (k the bin of ``BIN_EDGES``) adds a step,
    so the logistic regression learns a piecewise function of every feature.
    A value of exactly 0 (a feature that never varied: an input the operator does
    not send) is left out: it would add nothing but a constant, at the cost of a
    key per feature per prediction. Module-level so the pipeline pickles.
    """
    out: dict[str, float] = {}
    for k, v in x.items():
        if v == 0.0:
            continue
        v = -3.0 if v < -3.0 else 3.0 if v > 3.0 else v
        out[k] = v
        out[_bin_key(k, bisect.bisect_left(BIN_EDGES, v))] = 1.0
    return out


def binned_pairs(x: dict[str, float]) -> dict[str, float]:
    """``binned`` plus ``a*b``, the product of each pair of clipped standardised values.

    Pairs only among ``PAIRED`` (the cost grows with the square of their number).
    """
    out = binned(x)
    # The pair keys are the same for every call with the same features: built once
    # (profiled: the f-strings and the sort were half of this function's time), and
    # a full feature vector (the usual case) needs no filtering at all.
    names = PAIRED_ORDER if x.keys() >= PAIRED else tuple(k for k in PAIRED_ORDER if k in x)
    values = [out.get(k, 0.0) for k in names]
    for i, j, key in _pair_plan(names):
        product = values[i] * values[j]
        if product:  # a zero adds nothing (see ``binned``)
            out[key] = product
    return out


def clip_scaled(x: dict[str, float]) -> dict[str, float]:
    """Clip standardised values to [-3, 3] (module-level so the pipeline pickles)."""
    return {k: -3.0 if v < -3.0 else 3.0 if v > 3.0 else v for k, v in x.items()}


PRIOR_INPUT = "prior_logit"
"""The pipeline's input carrying the prior's log-odds."""


def numbers_only(x: dict[str, float]) -> dict[str, float]:
    """The numeric features: neither the prior's log-odds nor the one-hot categories."""
    # A key test per feature in Python cost a tenth of a prediction (profiled): a full
    # feature vector (the usual case) is copied in the catalogue's order without one.
    # (In a fixed order, not a set's: the sums downstream must add up the same way in
    # every process.)
    if len(x.keys() & _NUMERIC) == len(FEATURE_NAMES):
        return {k: x[k] for k in FEATURE_NAMES}
    return {k: x[k] for k in FEATURE_NAMES if k in x}


def passed_through(x: dict[str, float]) -> dict[str, float]:
    """What the regression reads unscaled: the prior's log-odds and the one-hot categories.

    The prior's log-odds is 0 when absent; an unknown category is a new key, with
    its own weight starting from 0.
    """
    out = {k: x[k] for k in sorted(x.keys() - _NUMERIC - {PRIOR_INPUT})}
    out[PRIOR_INPUT] = x.get(PRIOR_INPUT, 0.0)
    return out


_NUMERIC = frozenset(FEATURE_NAMES)


def _linear_parts(pipeline: Any) -> tuple[Any, Any]:
    """The StandardScaler and the LogisticRegression of a ``gam``/``ga2m``/``logreg`` pipeline."""
    union = pipeline["TransformerUnion"]
    features = next(t for t in union.transformers.values() if isinstance(t, compose.Pipeline))
    return features["StandardScaler"], pipeline["LogisticRegression"]


def _with_prior(x: dict[str, float], prior: float | None = None) -> dict[str, float]:
    """The pipeline's input: the features and the prior's log-odds (computed if not given)."""
    return {**x, PRIOR_INPUT: _logit(prior_score(x) if prior is None else prior)}
