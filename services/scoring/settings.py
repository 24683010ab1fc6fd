"""Scoring settings (environment variables, see README)."""

from __future__ import annotations

from pydantic import Field

from services.scoring.model import ModelParams
from shared.settings import BaseServiceSettings


class ScoringSettings(BaseServiceSettings):
    """Settings of the scoring service."""

    scoring_port: int = Field(default=8082, ge=1, le=65535)
    scoring_consumer_group: str = "churnwatch-scoring"
    scoring_horizon_days: float = Field(default=30.0, gt=0)
    scoring_min_labels: int = Field(default=200, ge=1)
    scoring_learning_rate: float = Field(default=0.05, gt=0)
    scoring_l2: float = Field(default=0.0, ge=0)
    scoring_model_name: str = "default"

    def model_params(self) -> ModelParams:
        """The River pipeline's parameters."""
        return ModelParams(
            learning_rate=self.scoring_learning_rate,
            l2=self.scoring_l2,
            min_labels=self.scoring_min_labels,
        )
