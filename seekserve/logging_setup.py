"""Process logging: plain text (default) or one JSON object per line, with the request id.

    {"ts": "2025-01-31T12:00:00.123+00:00", "level": "INFO", "logger": "seekserve.access",
     "msg": "POST /chat/completions 200 0.412s", "request_id": "3f2a…", "status": 200, …}

`request_id` is the request's `x-ds-trace-id`, read from a context variable that the API's
trace-id middleware sets; records logged outside a request have none. Fields passed with
`extra=` become top-level keys. Knows nothing of the API or the engine.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

LogFormat = Literal["text", "json"]

request_id_var: ContextVar[str | None] = ContextVar("seekserve_request_id", default=None)
"""The `x-ds-trace-id` of the request being served in this context (None outside one)."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# attributes every LogRecord has; anything else on a record came from `extra=`
_RECORD_FIELDS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's ANSI-coloured copy of msg
}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, msg, request_id (inside a request),
    the record's `extra` fields, and `exc` (the traceback) when one is attached."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id is not None:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str = "info", log_format: LogFormat = "text") -> None:
    """A stderr handler on the root logger in the chosen format. Like `logging.basicConfig`,
    nothing changes when the root logger already has handlers (an embedding application,
    pytest)."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level.upper())
