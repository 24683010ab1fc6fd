"""Prequential quality: how good were the predictions, measured when labels resolve.

Each label resolves a snapshot whose score was computed before the label was
known (test-then-train, as River's ``progressive_val_score`` with a delay).
The metrics are rolling over the last ``window`` resolved labels, so they say
how the model does now, not on average since install.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from river import drift, metrics, utils

COMPONENT_WINDOWS = 5
"""The prior-against-model comparison looks this many quality windows back."""
MIN_CLASS_IN_WINDOW = 50
"""Labels of each class the component window needs before its AUCs decide anything
(a quarter of the warm-up when that is smaller)."""


class Quality:
    """Rolling ROC AUC, log loss, precision among the top-k riskiest, and a drift flag."""

    def __init__(
        self,
        window: int = 2000,
        top_fraction: float = 0.1,
        delta: float = 0.002,
        warmup: int = 200,
    ):
        self.window = window
        self.warmup = warmup
        self.top_fraction = top_fraction
        # River's metrics are only partly typed; they are plain objects to us.
        self.auc: Any = metrics.RollingROCAUC(window_size=window)
        self.logloss: Any = utils.Rolling(metrics.LogLoss, window_size=window)
        self.recent: deque[tuple[float, bool]] = deque(maxlen=window)
        self.detector: Any = drift.ADWIN(delta=delta)
        # Since warm-up (the first `warmup` labels excluded), and per component.
        self.auc_after_warmup: Any = metrics.ROCAUC()
        # The champion/challenger comparison over a longer window than the figures:
        # at a few percent churn, two thousand labels hold a few dozen churns, and
        # the difference of two AUCs on them moves by as much as the trust band.
        component_window = COMPONENT_WINDOWS * window
        self.auc_prior: Any = metrics.RollingROCAUC(window_size=component_window)
        self.auc_model: Any = metrics.RollingROCAUC(window_size=component_window)
        self.component_labels = 0
        # Labels behind the rolling component AUCs: both classes must be in the window.
        self.component_recent: deque[bool] = deque(maxlen=component_window)
        self.classes_after_warmup: set[bool] = set()
        self.drifts = 0
        self.drift_detected = False
        self.resolved = 0
        # The prior's lead as last measured on a window holding both classes enough.
        self.decided_lead: float | None = None

    def update(
        self,
        predicted: float,
        churned: bool,
        components: tuple[float, float | None] | None = None,
    ) -> None:
        """Add one resolved prediction, and its (prior, model) components if known."""
        self.auc.update(churned, {True: predicted, False: 1 - predicted})
        if self.resolved >= self.warmup:
            self.auc_after_warmup.update(churned, {True: predicted, False: 1 - predicted})
            self.classes_after_warmup.add(churned)
        if components is not None and components[1] is not None:
            self.auc_prior.update(churned, components[0])
            self.auc_model.update(churned, components[1])
            self.component_labels += 1
            self.component_recent.append(churned)
        self.logloss.update(churned, {True: predicted, False: 1 - predicted})
        self.recent.append((predicted, churned))
        p = min(1 - 1e-9, max(1e-9, predicted))
        self.detector.update(-math.log(p if churned else 1 - p))
        self.drift_detected = bool(self.detector.drift_detected)
        self.drifts += int(self.drift_detected)
        self.resolved += 1

    def prior_lead(self) -> float | None:
        """How far the prior's rolling ROC AUC is ahead of the model's (None: too early).

        Over the last ``COMPONENT_WINDOWS`` quality windows of labels, measured
        only on a window with at least ``MIN_CLASS_IN_WINDOW`` labels of each class
        (a quarter of ``warmup`` when that is fewer), after ``warmup`` labels were
        scored by both. Labels resolve in bursts (churns at once, non-churns a
        horizon later; at the end of a replay every pending non-churn at once),
        and a window of thousands of non-churns and a handful of churns would hand
        the score to whichever component ranked those few best. Until a window is
        decisive again, the last decisive lead stands.
        """
        if self.component_labels < self.warmup:
            return None
        positives = sum(self.component_recent)
        negatives = len(self.component_recent) - positives
        if min(positives, negatives) >= max(1, min(MIN_CLASS_IN_WINDOW, self.warmup // 4)):
            self.decided_lead = float(self.auc_prior.get() - self.auc_model.get())
        return self.decided_lead

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Checkpoints from before the decisive window: nothing decided yet.
        state.setdefault("decided_lead", None)
        self.__dict__.update(state)

    def precision_at_top(self) -> float | None:
        """Share of churners among the top ``top_fraction`` riskiest recent predictions."""
        k = int(len(self.recent) * self.top_fraction)
        if k == 0:
            return None
        top = sorted(self.recent, key=lambda py: py[0], reverse=True)[:k]
        return sum(1 for _, y in top if y) / k

    def summary(self) -> dict[str, Any]:
        """The current figures (None until there is anything to measure)."""
        has_both = len({y for _, y in self.recent}) == 2
        return {
            "resolved": self.resolved,
            "window": self.window,
            "roc_auc": float(self.auc.get()) if has_both else None,
            "roc_auc_after_warmup": (
                float(self.auc_after_warmup.get()) if len(self.classes_after_warmup) == 2 else None
            ),
            "prior_lead": self.prior_lead(),
            "log_loss": float(self.logloss.get()) if self.recent else None,
            "precision_at_top": self.precision_at_top(),
            "top_fraction": self.top_fraction,
            "drift_detected": self.drift_detected,
            "drifts": self.drifts,
        }
