"""The expert prior: a transparent logistic score over the operator's warning signs.

Competitor calls, falling usage, complaints, arrears, a pending stop-notice,
spend drop, downgrades, late payments, inactivity: each a term of known weight,
so a fresh install scores from its first event and every score can be
explained. The online model (``services.scoring.model``) starts from it and
takes over once it ranks at least as well.
"""

from __future__ import annotations

import math

PRIOR_VERSION = "prior-v1"
"""The model version a score carries when the prior alone served it."""

# feature -> (weight in log-odds per unit, transform). Transforms keep each term
# pointing in the risk direction, so a positive contribution always means risk.
_PRIOR: dict[str, tuple[float, str]] = {
    "competitor_share_7d": (4.0, "value"),
    "competitor_share_change": (2.0, "positive"),
    "complaints_30d": (0.9, "value"),
    "stop_notice_pending": (1.2, "value"),
    "arrears_days": (0.03, "cap90"),
    "voice_trend": (1.5, "negative"),
    "spend_drop": (1.0, "value"),
    "downgrades_90d": (0.8, "value"),
    "late_payments_90d": (0.4, "value"),
    "days_since_activity": (0.15, "cap14"),
}
_PRIOR_INTERCEPT = -2.6


def _transform(value: float, how: str) -> float:
    if how == "positive":
        return max(0.0, value)
    if how == "negative":
        return max(0.0, -value)
    if how == "cap90":
        return min(value, 90.0)
    if how == "cap14":
        return min(value, 14.0)
    return value


def prior_contributions(x: dict[str, float]) -> dict[str, float]:
    """Each warning sign's contribution to the prior's log-odds."""
    return {name: w * _transform(x.get(name, 0.0), how) for name, (w, how) in _PRIOR.items()}


def prior_score(x: dict[str, float]) -> float:
    """The expert prior's churn probability."""
    logit = _PRIOR_INTERCEPT + sum(prior_contributions(x).values())
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, logit))))


# The risk direction of each prior term, for choosing the reason's wording.
_PRIOR_HIGH = {name: how != "negative" for name, (_, how) in _PRIOR.items()}
