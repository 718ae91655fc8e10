"""The service's JSON log handler writes to the current stderr, even after the one it started with closed."""

from __future__ import annotations

import io
import json
import logging
import sys

from xscreen.service.logs import configure_logging


def test_logs_follow_a_swapped_stderr_instead_of_failing_on_a_closed_one(monkeypatch):
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        first = io.StringIO()
        monkeypatch.setattr(sys, "stderr", first)
        configure_logging("info")
        logging.getLogger("xscreen.test").info("one", extra={"scan_id": "a"})
        assert json.loads(first.getvalue())["scan_id"] == "a"
        first.close()  # what pytest's capture does to the stream of a finished test
        second = io.StringIO()
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("xscreen.test").info("two")
        (line,) = second.getvalue().splitlines()
        assert json.loads(line)["msg"] == "two" and "Logging error" not in second.getvalue()
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
