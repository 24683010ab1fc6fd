"""Outreach: sends SMS, runs the call queue, and serves the tasks REST API."""
