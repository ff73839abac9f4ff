"""The probe process of test_durability.py: writes a few batches, then syncs, between printed markers.

Run as `python sync_probe.py KIND DIRECTORY DURABLE BATCHES` under strace. The markers are plain
writes to stdout, so they appear in the syscall trace and split it into the writes and the sync.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dynastore.storage import Op, open_engine

MARKERS = ("writes-begin", "writes-end", "sync-begin", "sync-end")


def main(kind: str, directory: Path, durable: bool, batches: int) -> None:
    engine = open_engine(kind, directory, durable=durable)
    print(MARKERS[0], flush=True)
    for batch in range(batches):
        engine.write([Op("data", b"%d-%d" % (batch, index), b"v" * 300) for index in range(50)])
    print(MARKERS[1], flush=True)
    print(MARKERS[2], flush=True)
    engine.sync()
    print(MARKERS[3], flush=True)
    engine.close()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "durable", int(sys.argv[4]))
