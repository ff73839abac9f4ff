"""Argument checks shared by every engine, so that all of them refuse the same misuse the same way.

A wrong area name or a key of the wrong type is refused with StorageError before anything is
written; an engine that checked less than another would let a bug pass in tests against one engine
and corrupt data under another (SQLite, for one, would store a `str` key as TEXT, which sorts apart
from every BLOB). This module must never touch a file or hold state.
"""

from __future__ import annotations

from collections.abc import Sequence

from dynastore.storage.base import AREAS, Op, StorageError

_AREA_SET = frozenset(AREAS)


def check_area(area: str) -> None:
    if area not in _AREA_SET:
        raise StorageError(f"unknown storage area {area!r}; the areas are {', '.join(AREAS)}")


def check_key(key: bytes) -> None:
    if not isinstance(key, bytes):
        raise StorageError(f"storage keys are bytes, got {type(key).__name__}")


def check_ops(ops: Sequence[Op]) -> None:
    """Refuse the whole batch if any op is malformed, so that a bad op never leaves half a batch behind."""
    for op in ops:
        check_area(op.area)
        check_key(op.key)
        if op.value is not None and not isinstance(op.value, bytes):
            raise StorageError(f"storage values are bytes or None, got {type(op.value).__name__}")


def check_scan(area: str, start: bytes, end: bytes | None, limit: int, bytes_max: int | None = None) -> None:
    check_area(area)
    check_key(start)
    if end is not None:
        check_key(end)
    # bool is an int, but a flag passed as a limit is certainly a mistake.
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise StorageError(f"scan limit must be a non-negative int, got {limit!r}")
    if bytes_max is not None and (not isinstance(bytes_max, int) or isinstance(bytes_max, bool) or bytes_max < 1):
        raise StorageError(f"scan bytes_max must be a positive int or None, got {bytes_max!r}")
