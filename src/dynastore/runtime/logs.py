"""How a node process writes its log: the level and one of two formats, set once at start-up.

`text` is one human line per record (time, node, level, logger, message). `json` is one JSON object
per line for log collectors: `ts` (ISO-8601, UTC, milliseconds), `level`, `logger`, `msg`, `node`
when the process names one, and, for an event (a record logged with
`extra={"event": kind, "fields": {...}}`), `event` and each field at the top level. A field never
replaces one of those keys: it is written as `field_<name>` instead.

The core never logs; the shell logs what the core reports. Nothing here reads the environment.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")

# The keys of a JSON line that no event field may take.
RESERVED = frozenset(("ts", "level", "logger", "msg", "node", "event", "exc"))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (see the module docstring)."""

    def __init__(self, node: str = "") -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, tz=datetime.UTC)
        out: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if self.node:
            out["node"] = self.node
        event = getattr(record, "event", None)
        if event is not None:
            out["event"] = str(event)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            for name, value in fields.items():
                key = str(name)
                out[f"field_{key}" if key in RESERVED else key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        # A value JSON has no form for (bytes, a path) is written as its str(), never dropped.
        return json.dumps(out, default=str, ensure_ascii=False, separators=(",", ":"))


def formatter(fmt: str, node: str = "") -> logging.Formatter:
    """The formatter for `fmt` (one of FORMATS)."""
    if fmt == "json":
        return JsonFormatter(node)
    if fmt == "text":
        prefix = f"{node} " if node else ""
        return logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s")
    raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def configure(level: str, fmt: str, node: str = "") -> None:
    """Send every record at `level` or above (one of LEVELS, any case) to standard error in `fmt`,
    replacing whatever handlers the root logger had."""
    name = level.lower()
    if name not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(fmt, node))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, name.upper()))
