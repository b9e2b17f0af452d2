"""The JSON log format: one object per line, extra fields on top, the request id from the
context variable, tracebacks as a field."""

from __future__ import annotations

import json
import logging
import sys

from seekserve.cli import build_parser
from seekserve.logging_setup import JsonFormatter, request_id_var


def record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    logger = logging.getLogger("seekserve.test")
    made = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, msg, args, None)
    made.__dict__.update(extra)
    return made


def test_one_json_object_with_extra_fields():
    line = JsonFormatter().format(record("served %d tokens", 7, model="m", status=200))
    assert "\n" not in line
    entry = json.loads(line)
    assert entry.pop("ts").endswith("+00:00")
    assert entry == {
        "level": "WARNING",
        "logger": "seekserve.test",
        "msg": "served 7 tokens",
        "model": "m",
        "status": 200,
    }


def test_request_id_from_the_context():
    token = request_id_var.set("abc123")
    try:
        entry = json.loads(JsonFormatter().format(record("inside")))
    finally:
        request_id_var.reset(token)
    assert entry["request_id"] == "abc123"
    assert "request_id" not in json.loads(JsonFormatter().format(record("outside")))


def test_traceback_as_a_field():
    try:
        raise ValueError("bad")
    except ValueError:
        logger = logging.getLogger("seekserve.test")
        made = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, "x", (), sys.exc_info())
    entry = json.loads(JsonFormatter().format(made))
    assert entry["exc"].startswith("Traceback") and "ValueError: bad" in entry["exc"]


def test_serve_log_format_flag():
    parser = build_parser()
    assert parser.parse_args(["serve"]).log_format == "text"
    assert parser.parse_args(["serve", "--log-format", "json"]).log_format == "json"
