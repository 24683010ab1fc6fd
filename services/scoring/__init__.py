"""Scoring: per-subscriber features and an online River churn model."""
