"""Plumbing and contracts shared by every churnwatch service.

Only what crosses a service boundary lives here: settings base, database and
Kafka plumbing, the dead-letter queue, the error tree, logging, metrics and the
event contract. Domain logic stays in ``services/``.
"""
