"""The JSON log lines (python-json-logger under shared/logging.py): fields, masking, request id."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from shared.logging import REQUEST_ID, JsonFormatter, PiiFilter, RequestIdFilter, mask_subscriber


@pytest.fixture
def logged() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger whose lines go, as the services write them, to a string."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(PiiFilter())
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.jsonlines")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield logger, stream
    finally:
        logger.removeHandler(handler)


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_has_our_field_names_the_time_first_and_the_request_id(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logged
    token = REQUEST_ID.set("r-42")
    try:
        logger.info(
            "batch of %d", 7, extra={"topic": "churnwatch.events", "when": datetime.now(UTC)}
        )
    finally:
        REQUEST_ID.reset(token)
    logger.info("outside a request")
    inside, outside = _lines(stream)
    assert list(inside)[:4] == ["ts", "level", "logger", "msg"]
    assert inside["level"] == "INFO" and inside["logger"] == "test.jsonlines"
    assert inside["msg"] == "batch of 7" and inside["topic"] == "churnwatch.events"
    assert inside["request_id"] == "r-42" and "request_id" not in outside
    ts = datetime.fromisoformat(str(inside["ts"]))
    assert ts.tzinfo is not None and abs((datetime.now(UTC) - ts).total_seconds()) < 60
    assert isinstance(inside["when"], str)  # a value JSON has no type for is written as text
    # None of the record's own attributes leak into the line.
    assert not {"args", "levelno", "pathname", "msecs", "exc_text", "color_message"} & set(inside)


def test_tracebacks_stacks_and_dict_messages_are_masked(
    logged: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = logged
    try:
        raise RuntimeError("gateway refused +447700900126")
    except RuntimeError:
        logger.exception("send failed")
    logger.warning("look at +447700900127", stack_info=True)
    logger.info({"phone": "+447700900128", "subscriber_id": "S-9", "event": "sent"})
    text = stream.getvalue()
    for secret in ("7700900126", "7700900127", "7700900128", "S-9"):
        assert secret not in text, secret
    failed, stacked, as_dict = _lines(stream)
    assert "RuntimeError: gateway refused ***26" in str(failed["exc"])
    assert str(stacked["stack"]).startswith("Stack (most recent call last)")
    assert as_dict["phone"] == "***28" and as_dict["subscriber_id"] == mask_subscriber("S-9")
    assert as_dict["event"] == "sent"


def test_a_traceback_another_formatter_cached_is_masked_too() -> None:
    try:
        raise ValueError("no route to +447700900131")
    except ValueError:
        record = logging.getLogger("test.cached").makeRecord(
            "test.cached", logging.ERROR, __file__, 1, "failed", (), None
        )
        record.exc_text = logging.Formatter().formatException(sys.exc_info())
    line = json.loads(JsonFormatter().format(record))
    assert "7700900131" not in line["exc"] and "***31" in line["exc"]
