"""The LMDB engine's gate: a map resize waits for the reads in progress and runs alone, and a read
that arrives while a resize waits or runs goes on only after it (LMDB resizes only with no transaction
open in the process)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from dynastore.storage.lmdb_engine import _Gate

WAIT_S = 5.0


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.001)


def test_a_resize_waits_for_the_read_in_progress_and_a_new_read_waits_for_the_resize() -> None:
    gate = _Gate()
    events: list[str] = []
    gate.enter_shared()
    resizing = threading.Event()

    def resize() -> None:
        with gate.alone() as alone:
            assert alone
            events.append("resize")
            resizing.set()
            time.sleep(0.05)
            events.append("resized")

    def read() -> None:
        gate.enter_shared()
        events.append("late read")
        gate.exit_shared()

    resizer = threading.Thread(target=resize)
    resizer.start()
    _until(lambda: gate._resizing, "the resize never began waiting")
    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.05)
    # The resize waits for the read that holds the gate, and the late read waits for the resize.
    assert events == []
    events.append("first read done")
    gate.exit_shared()
    resizer.join(WAIT_S)
    reader.join(WAIT_S)
    assert not resizer.is_alive() and not reader.is_alive()
    assert events == ["first read done", "resize", "resized", "late read"]
    assert gate._active == 0 and not gate._resizing


def test_reads_share_the_gate_and_leave_it_open() -> None:
    gate = _Gate()
    for _ in range(3):
        gate.enter_shared()
    assert gate._active == 3
    for _ in range(3):
        gate.exit_shared()
    with gate.alone() as alone:
        assert alone
