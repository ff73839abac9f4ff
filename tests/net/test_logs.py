"""The node's log configuration (runtime/logs.py): json lines carry ts, level, logger, msg and an
event's fields at the top level; a level or format outside the known ones is refused."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from dynastore.runtime import logs


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("dynastore.node", logging.WARNING, __file__, 1, "peer %s down", ("b",), None)
    for key, value in extra.items():
        setattr(record, key, value)
    record.created = 1_700_000_000.25
    return record


def test_a_json_line_has_ts_level_logger_msg_and_an_events_fields_at_the_top_level() -> None:
    record = _record(event="peer_down", fields={"peer": "b", "phi": 9.5, "level": "clash"})
    line = logs.JsonFormatter(node="a").format(record)
    assert "\n" not in line
    assert json.loads(line) == {
        "ts": "2023-11-14T22:13:20.250Z",
        "level": "warning",
        "logger": "dynastore.node",
        "msg": "peer b down",
        "node": "a",
        "event": "peer_down",
        "peer": "b",
        "phi": 9.5,
        # A field never takes one of the line's own keys.
        "field_level": "clash",
    }


def test_a_json_line_without_an_event_has_no_event_keys_and_carries_an_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record()
        record.exc_info = sys.exc_info()
    out = json.loads(logs.JsonFormatter().format(record))
    assert set(out) == {"ts", "level", "logger", "msg", "exc"}
    assert "ValueError: boom" in out["exc"]


def test_a_value_json_cannot_hold_is_written_as_text() -> None:
    out = json.loads(logs.JsonFormatter().format(_record(event="x", fields={"raw": b"\x01"})))
    assert out["raw"] == "b'\\x01'"


def test_configure_sets_the_root_level_case_insensitively_and_refuses_unknown_words() -> None:
    root = logging.getLogger()
    before = (root.level, list(root.handlers))
    try:
        logs.configure("WARNING", "json")
        assert root.level == logging.WARNING
        assert isinstance(root.handlers[0].formatter, logs.JsonFormatter)
        logs.configure("debug", "text", node="n1")
        assert root.level == logging.DEBUG and len(root.handlers) == 1
        assert "n1 WARNING dynastore.node: peer b down" in root.handlers[0].format(_record())
        with pytest.raises(ValueError, match="log level must be one of debug, info, warning, error"):
            logs.configure("loud", "text")
        with pytest.raises(ValueError, match="log format must be one of text, json"):
            logs.configure("info", "xml")
    finally:
        root.setLevel(before[0])
        root.handlers[:] = before[1]
