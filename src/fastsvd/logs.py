"""Structured logs: one JSON object per line (``FASTSVD_LOG_FORMAT=json``) or readable text."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message"}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "msg", ...extra fields}`` per line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure() -> None:
    """Log to stderr at ``FASTSVD_LOG_LEVEL`` (INFO) in ``FASTSVD_LOG_FORMAT`` (text|json)."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("FASTSVD_LOG_FORMAT", "text").lower() == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s")
        )
    root = logging.getLogger("fastsvd")
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("FASTSVD_LOG_LEVEL", "INFO").upper())
    root.propagate = False
