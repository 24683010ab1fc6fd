"""Structured JSON logs with personal data masked.

Phone numbers never reach a log line: a filter masks anything shaped like one
in the message and in extra fields, and subscriber ids passed as the
``subscriber_id`` extra are shortened to a stable hash prefix, enough to
correlate lines without exposing the id.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

import orjson

# International numbers (a '+' then digits, maybe spaced) and national numbers
# written as a run of 9-15 digits. Not dates, not the digit groups of a UUID.
_PHONE_RE = re.compile(r"\+\d[\d\s-]{5,}\d|(?<![\w-])\d{9,15}(?![\w-])")
_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "color_message"}


REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
"""The id of the HTTP request being served (set by ``shared.errors``), for log lines."""


def mask_phone(text: str) -> str:
    """Replace anything shaped like a phone number, keeping the last two digits."""
    return _PHONE_RE.sub(lambda m: "***" + re.sub(r"\D", "", m.group())[-2:], text)


def mask_subscriber(subscriber_id: str) -> str:
    """A stable, non-reversible short form of a subscriber id for logs."""
    return "sub_" + hashlib.sha256(subscriber_id.encode()).hexdigest()[:10]


class PiiFilter(logging.Filter):
    """Masks phone numbers and subscriber ids on every record that passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask the record in place; never drops it."""
        if isinstance(record.msg, str):
            record.msg = mask_phone(record.msg)
        if record.args:
            record.args = tuple(
                mask_phone(a) if isinstance(a, str) else a
                for a in (record.args if isinstance(record.args, tuple) else (record.args,))
            )
        for key, value in list(vars(record).items()):
            if key in _RESERVED:
                continue
            if key == "subscriber_id" and isinstance(value, str):
                setattr(record, key, mask_subscriber(value))
            elif isinstance(value, str):
                setattr(record, key, mask_phone(value))
        return True


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to records logged while an HTTP request is served."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Tag the record in place; never drops it."""
        request_id = REQUEST_ID.get()
        if request_id is not None and not hasattr(record, "request_id"):
            record.request_id = request_id
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as a JSON line."""
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = mask_phone(self.formatException(record.exc_info))
        return orjson.dumps(out, default=str).decode()


def configure_logging(level: str = "INFO", *, json: bool = True, service: str = "") -> None:
    """Set up the root logger once per process: JSON lines on stderr, PII masked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(PiiFilter())
    handler.addFilter(RequestIdFilter())
    if json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka logs every reconnect attempt at ERROR; keep it to warnings of our own.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
