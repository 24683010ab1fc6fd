"""Structured JSON logs with personal data masked.

Phone numbers never reach a log line: a filter masks anything shaped like one
in the message, its arguments, extra fields (nested ones too) and tracebacks.
Subscriber ids passed as the ``subscriber_id`` (or ``subscriber_ids``) extra are
shortened to a stable hash prefix, enough to correlate lines without exposing
the id. API keys and bearer tokens keep only their public key id.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from numbers import Number
from typing import Any

from asgi_correlation_id import correlation_id
from pythonjsonlogger.orjson import OrjsonFormatter

# International numbers (a '+' then digits, maybe spaced) and national numbers
# written as a run of 9-15 digits. Not dates, not the digit groups of a UUID.
_PHONE_RE = re.compile(r"\+\d[\d\s-]{5,}\d|(?<![\w-])\d{9,15}(?![\w-])")
_RESERVED = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "color_message"}
# Secrets that may end up in an error text: our API keys (the id may stay, it is
# what `churnwatch keys list` shows) and any bearer token.
_API_KEY_RE = re.compile(r"\b(cw_[0-9a-f]{12})_[A-Za-z0-9_-]+")
_BEARER_RE = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]+")
_SUBSCRIBER_KEYS = frozenset({"subscriber_id", "subscriber_ids"})
# The record's attributes under the names our log lines have always had.
_JSON_FIELDS = {
    "levelname": "level",
    "name": "logger",
    "message": "msg",
    "exc_info": "exc",
    "stack_info": "stack",
}


# asgi-correlation-id's context variable, which its middleware sets (shared.errors).
REQUEST_ID: ContextVar[str | None] = correlation_id
"""The id of the HTTP request being served (set by ``shared.errors``), for log lines."""


def mask_phone(text: str) -> str:
    """Replace anything shaped like a phone number, keeping the last two digits."""
    return _PHONE_RE.sub(lambda m: "***" + re.sub(r"\D", "", m.group())[-2:], text)


def mask_text(text: str) -> str:
    """Mask phone numbers, API key secrets and bearer tokens in free text."""
    text = _API_KEY_RE.sub(r"\1_***", text)
    text = _BEARER_RE.sub(r"\1***", text)
    return mask_phone(text)


def _mask_value(value: Any, *, subscriber: bool = False) -> Any:
    """``value`` with personal data masked, looking into dicts, lists and tuples."""
    if isinstance(value, str):
        return mask_subscriber(value) if subscriber else mask_text(value)
    if isinstance(value, dict):
        return {
            k: _mask_value(v, subscriber=subscriber or k in _SUBSCRIBER_KEYS)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_mask_value(v, subscriber=subscriber) for v in value]
    return value


def mask_subscriber(subscriber_id: str) -> str:
    """A stable, non-reversible short form of a subscriber id for logs."""
    return "sub_" + hashlib.sha256(subscriber_id.encode()).hexdigest()[:10]


class PiiFilter(logging.Filter):
    """Masks phone numbers and subscriber ids on every record that passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask the record in place; never drops it."""
        if isinstance(record.msg, str):
            record.msg = mask_text(record.msg)
        elif isinstance(record.msg, dict):  # log.info({...}): its keys become fields
            record.msg = _mask_value(record.msg)
        if isinstance(record.args, Mapping):  # log.info("%(x)s", {"x": ...})
            record.args = _mask_value(dict(record.args))
        elif record.args:
            # Numbers stay numbers (for %d, %.2f). Anything else (an exception, a
            # dict) is rendered with %s or %r later: render it now, masked.
            record.args = tuple(
                a if isinstance(a, Number) else mask_text(a if isinstance(a, str) else str(a))
                for a in record.args
            )
        for key, value in list(vars(record).items()):
            if key in _RESERVED:
                continue
            setattr(record, key, _mask_value(value, subscriber=key in _SUBSCRIBER_KEYS))
        return True


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to records logged while an HTTP request is served."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Tag the record in place; never drops it."""
        request_id = REQUEST_ID.get()
        if request_id is not None and not hasattr(record, "request_id"):
            record.request_id = request_id
        return True


class JsonFormatter(OrjsonFormatter):
    """One JSON object per line: ts, level, logger, msg, any extra fields, exc and stack.

    python-json-logger does the record-to-JSON work (extras, reserved attributes,
    tracebacks, stack info, values JSON has no type for); this class only fixes
    our field names and masks the tracebacks, which the filters cannot reach
    because they are rendered here.
    """

    def __init__(self) -> None:
        super().__init__(
            "%(levelname)s %(name)s %(message)s",
            rename_fields=_JSON_FIELDS,
            reserved_attrs=sorted(_RESERVED),
            timestamp="ts",
            json_default=_json_default,
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        """Mask the traceback and the stack (also one another formatter cached); ts first."""
        for key in ("exc", "stack"):
            if isinstance(log_data.get(key), str):
                log_data[key] = mask_text(log_data[key])
        return {"ts": log_data.pop("ts"), **log_data}


def _json_default(value: Any) -> Any:
    # What orjson cannot encode is written as text, as the formatter always did.
    return str(value)


class PlainFormatter(logging.Formatter):
    """Text lines (``LOG_JSON=false``), with tracebacks masked like the message."""

    def formatException(self, ei: Any) -> str:
        """The traceback, with phone numbers and secrets masked."""
        return mask_text(super().formatException(ei))


def configure_logging(level: str = "INFO", *, json: bool = True, service: str = "") -> None:
    """Set up the root logger once per process: JSON lines on stderr, PII masked."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(PiiFilter())
    handler.addFilter(RequestIdFilter())
    if json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            PlainFormatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka logs every reconnect attempt at ERROR; keep it to warnings of our own.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))
