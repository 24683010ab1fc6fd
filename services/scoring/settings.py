"""Scoring settings (environment variables, see README)."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator

from services.scoring.model import ModelKind, ModelParams
from services.scoring.scorer import DAY, EngineParams
from shared.settings import BaseServiceSettings


class ScoringSettings(BaseServiceSettings):
    """Settings of the scoring service."""

    scoring_port: int = Field(default=8082, ge=1, le=65535)
    scoring_consumer_group: str = "churnwatch-scoring"
    scoring_model: ModelKind = "ga2m"
    scoring_model_name: str = Field(default="default", max_length=64)
    scoring_min_labels: int = Field(default=200, ge=1)
    scoring_learning_rate: float | None = Field(
        default=None, gt=0, description="None: the model kind's default."
    )
    scoring_l2: float = Field(default=0.001, ge=0)
    scoring_seed: int = 42
    scoring_horizon_days: float = Field(default=30.0, gt=0)
    scoring_allowed_lateness_hours: float = Field(default=24.0, ge=0)
    scoring_snapshot_interval_hours: float = Field(default=24.0, gt=0)
    scoring_max_snapshots: int = Field(default=40, ge=1, le=1000)
    scoring_min_history_days: float = Field(
        default=2.0, ge=0, description="No label snapshots before this much history."
    )
    scoring_label_step_days: float = Field(
        default=3.0,
        gt=0,
        description="The model learns 'churned within this many days' labels (at most the "
        "horizon), which resolve within days of a fresh install.",
    )
    scoring_involuntary_churn_days: float = Field(
        default=0.0, ge=0, description="A suspension unpaid this long counts as churn; 0: off."
    )
    scoring_checkpoint_every: int = Field(default=500, ge=1)
    scoring_checkpoint_interval_s: float = Field(default=60.0, gt=0)
    scoring_checkpoints_kept: int = Field(default=10, ge=1)
    scoring_band_high: float = Field(default=0.7, gt=0, lt=1)
    scoring_band_medium: float = Field(default=0.5, gt=0, lt=1)
    # Bigger than the other services' batches: several events of one subscriber in
    # a batch are one re-score and one row write (measured: 500 -> 5000 is +30%).
    scoring_batch_max_records: int = Field(default=5000, ge=1, le=100_000)
    scoring_publish_min_delta: float = Field(default=0.01, ge=0, lt=1)
    scoring_state_cache_size: int = Field(default=50_000, ge=0)
    scoring_quality_window: int = Field(default=2000, ge=10)
    scoring_top_fraction: float = Field(default=0.1, gt=0, le=1)
    scoring_drift_delta: float = Field(default=0.002, gt=0, lt=1)

    @model_validator(mode="after")
    def _bands_ordered(self) -> Self:
        if self.scoring_band_medium >= self.scoring_band_high:
            raise ValueError("SCORING_BAND_MEDIUM must be below SCORING_BAND_HIGH")
        return self

    def model_params(self) -> ModelParams:
        """The River pipeline's parameters."""
        return ModelParams(
            kind=self.scoring_model,
            learning_rate=self.scoring_learning_rate,
            l2=self.scoring_l2,
            min_labels=self.scoring_min_labels,
            seed=self.scoring_seed,
            quality_window=self.scoring_quality_window,
            top_fraction=self.scoring_top_fraction,
            drift_delta=self.scoring_drift_delta,
        )

    @property
    def label_step_days(self) -> float:
        """The label step in days, at most the horizon."""
        return min(self.scoring_label_step_days, self.scoring_horizon_days)

    def engine_params(self) -> EngineParams:
        """The labelling parameters."""
        return EngineParams(
            horizon_s=self.scoring_horizon_days * DAY,
            lateness_s=self.scoring_allowed_lateness_hours * 3600,
            snapshot_interval_s=self.scoring_snapshot_interval_hours * 3600,
            max_snapshots=self.scoring_max_snapshots,
            involuntary_churn_s=self.scoring_involuntary_churn_days * DAY,
            min_history_s=self.scoring_min_history_days * DAY,
            label_step_s=self.label_step_days * DAY,
        )

    def band(self, score: float) -> Literal["high", "medium", "low"]:
        """``high``, ``medium`` or ``low``."""
        if score >= self.scoring_band_high:
            return "high"
        return "medium" if score >= self.scoring_band_medium else "low"

    def worth_publishing(self, last: float | None, score: float) -> bool:
        """Whether a re-score is published: first one, band changed, or moved enough.

        Alerting only acts on movement; the service and the backtest both ask here.
        """
        return (
            last is None
            or self.band(last) != self.band(score)
            or abs(score - last) >= self.scoring_publish_min_delta
        )
