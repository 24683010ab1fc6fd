"""Alembic migrations for every churnwatch table (one history, one schema per service)."""
