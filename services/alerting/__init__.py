"""Alerting: turns scores and events into outreach tasks."""
