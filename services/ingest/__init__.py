"""Ingest: validates billing-system events and streams them into Kafka."""
