"""The four churnwatch services: ingest, scoring, alerting, outreach."""
