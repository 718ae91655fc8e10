"""Structured logging: one JSON object per line on stderr (request lines carry scan_id, status, timings).

Every line written while a request is handled carries its ``request_id`` and ``trace_id`` (set by the
observability middleware in a context variable, which threads started with ``asyncio.to_thread`` inherit).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

# Attributes every LogRecord has; anything else passed via ``extra=`` goes into the JSON object.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn adds an ANSI-coloured copy of msg
}


# {"request_id": ..., "trace_id": ...} of the request being handled, None outside requests.
request_ids: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "xscreen_request_ids", default=None
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in (request_ids.get() or {}).items():
            entry[key] = value
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


class StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever ``sys.stderr`` is when a record is emitted, not when it was made.

    ``xscreen serve`` run in-process (tests, embedding) may have its stderr swapped or closed after the
    handler was installed; a handler bound to the old stream would then fail on every record.
    """

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # StreamHandler.__init__ and setStream assign it; stderr it stays
        pass


def configure_logging(level: str = "info") -> None:
    """Route the root logger (and uvicorn's, which propagate) to one JSON handler on stderr."""
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    # The service writes its own request line; uvicorn's access log would duplicate it.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
