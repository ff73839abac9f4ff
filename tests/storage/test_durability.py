"""An acknowledged batch of a durable engine survives its writer being killed; no batch is ever half there.

A separate writer process (durability_writer.py) announces each batch before `write` and reports it
once `write` returns; the test kills it with SIGKILL a chosen fraction of a typical write after it
announced a batch, reopens the store and checks every reported batch in full. Rounds repeat on the
same store with the kill placed ever later in the write, so recovery from a killed writer is
exercised too.

A killed process leaves its writes in the kernel's page cache, so that test would pass without any
fsync; only a power cut loses the page cache. So a second test traces the system calls of a probe
process (with strace, when the machine has it) and checks that durable mode syncs every batch
before the next one, and buffered mode syncs nothing until `sync` is called.
"""

from __future__ import annotations

import queue
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from durability_writer import LAST_BATCH_KEY, OPS_PER_BATCH, batch_of, batch_value

from dynastore.storage import open_engine
from dynastore.storage.base import scan_all

WRITER = Path(__file__).with_name("durability_writer.py")
PROBE = Path(__file__).with_name("sync_probe.py")
# Where each round's kill lands, as a fraction of a typical write: from "as it starts" to "just after".
KILL_POINTS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
REPORTS_PER_ROUND = 20
WRITER_TIMEOUT_S = 30.0


def run_writer_until_killed(kind: str, directory: Path, reports_wanted: int, kill_point: float, log: Path) -> list[int]:
    """Run the writer; after `reports_wanted` reports, SIGKILL it `kill_point` of a write into the next batch.

    Returns every batch the writer reported as synced.
    """
    lines: queue.Queue[tuple[float, str] | None] = queue.Queue()
    with log.open("w") as stderr:
        writer = subprocess.Popen(
            [sys.executable, str(WRITER), kind, str(directory)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )

    def pump() -> None:
        assert writer.stdout is not None
        for line in writer.stdout:
            lines.put((time.monotonic(), line))
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    reported: list[int] = []
    write_durations_s: list[float] = []
    announced_at = 0.0
    try:
        deadline = time.monotonic() + WRITER_TIMEOUT_S
        while True:
            try:
                item = lines.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                pytest.fail(f"the writer reported {len(reported)} batches in {WRITER_TIMEOUT_S} s")
            if item is None:
                pytest.fail(f"the writer exited early: {log.read_text()}")
            seen_at, line = item
            if line.startswith("writing"):
                announced_at = seen_at
                if len(reported) >= reports_wanted:
                    # A pause, not a wait for a condition: it places the kill inside the write.
                    time.sleep(kill_point * statistics.median(write_durations_s))
                    break
            else:
                reported.append(int(line.removeprefix("synced ")))
                write_durations_s.append(seen_at - announced_at)
    finally:
        writer.kill()
        writer.wait(timeout=10)
    reader.join(timeout=10)
    assert not reader.is_alive(), "the writer's stdout never closed"
    assert writer.stdout is not None
    writer.stdout.close()
    # Reports already in the pipe when the kill landed are acknowledgements too.
    while (item := lines.get_nowait()) is not None:
        if item[1].startswith("synced"):
            reported.append(int(item[1].removeprefix("synced ")))
    return reported


def complete_batches(kind: str, directory: Path) -> tuple[list[int], int | None]:
    """The batches the store holds, each checked to be whole and intact, and its `last-batch` record."""
    engine = open_engine(kind, directory, durable=True)
    try:
        held: dict[int, int] = {}
        for key, value in scan_all(engine, "data"):
            batch = batch_of(key)
            index = int(key[15:])
            assert value == batch_value(batch, index), key
            held[batch] = held.get(batch, 0) + 1
        partial = {batch: count for batch, count in held.items() if count != OPS_PER_BATCH}
        assert not partial, f"batches only partly written: {partial}"
        last = engine.get("meta", LAST_BATCH_KEY)
        return sorted(held), None if last is None else int(last)
    finally:
        engine.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["lmdb", "sqlite"])
def test_every_acknowledged_batch_survives_sigkill_whole(kind: str, tmp_path: Path) -> None:
    directory = tmp_path / "store"
    held: list[int] = []
    for round_number, kill_point in enumerate(KILL_POINTS):
        log = tmp_path / f"writer-{round_number}.log"
        reported = run_writer_until_killed(kind, directory, REPORTS_PER_ROUND, kill_point, log)
        # The writer resumed right after the newest whole batch and reported every batch in turn.
        assert reported == list(range(len(held), len(held) + len(reported))), reported
        held, last = complete_batches(kind, directory)
        # Batches are whole (checked while reading) and contiguous; every acknowledged one is there,
        # plus at most the one killed after its write returned but before its report was printed.
        assert held == list(range(len(held)))
        assert held[-1] in (reported[-1], reported[-1] + 1), (held[-1], reported[-1])
        # The `meta` op of a batch commits with its `data` ops, so it names the newest whole batch.
        assert last == held[-1]


def syncs_between_markers(trace: str) -> dict[str, int]:
    """How many fsync/fdatasync calls the probe made during its writes and during its sync."""
    counts = {"writes": 0, "sync": 0}
    phase: str | None = None
    for line in trace.splitlines():
        marker = re.search(r'write\(1, "(\w+)-(begin|end)', line)
        if marker:
            phase = marker.group(1) if marker.group(2) == "begin" else None
        elif phase is not None and re.search(r"\b(fsync|fdatasync)\(", line):
            counts[phase] += 1
    return counts


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["lmdb", "sqlite"])
@pytest.mark.parametrize("durable", [True, False], ids=["durable", "buffered"])
def test_durable_mode_syncs_each_batch_and_buffered_mode_only_on_sync(kind: str, durable: bool, tmp_path: Path) -> None:
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed")
    batches = 5
    trace = tmp_path / "trace"
    mode = "durable" if durable else "buffered"
    command = [sys.executable, str(PROBE), kind, str(tmp_path / "store"), mode, str(batches)]
    probe = subprocess.run(
        [strace, "-f", "-e", "trace=write,fsync,fdatasync", "-o", str(trace), *command],
        capture_output=True,
        text=True,
        timeout=50,
    )
    if probe.returncode != 0 and "ptrace" in probe.stderr:
        pytest.skip(f"strace cannot trace here: {probe.stderr.strip()}")
    assert probe.returncode == 0, probe.stderr
    counts = syncs_between_markers(trace.read_text())
    if durable:
        # LMDB fdatasyncs the data pages and writes the meta page through an O_DSYNC descriptor;
        # SQLite fsyncs the WAL. Either way: at least one sync per committed batch.
        assert counts["writes"] >= batches, counts
    else:
        assert counts["writes"] == 0, counts
        assert counts["sync"] >= 1, counts
