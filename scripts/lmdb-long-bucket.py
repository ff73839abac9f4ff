"""Per-key write and read time of 1,500 keys in one bucket whose name is 600 bytes long, on the LMDB
engine (durable=False: the layout's cost, not the disk's). Run it against another checkout with
PYTHONPATH=<checkout>/src to compare layouts."""

import sys
import tempfile
import time
from pathlib import Path

from dynastore.storage.base import Op
from dynastore.storage.lmdb_engine import LmdbEngine

COUNT = 1500
label = sys.argv[1] if len(sys.argv) > 1 else "this checkout"
with tempfile.TemporaryDirectory() as directory:
    engine = LmdbEngine(Path(directory), durable=False)
    head, value = b"b" * 600, b"x" * 100
    started = time.perf_counter()
    for i in range(COUNT):
        engine.write([Op("data", head + b"%06d" % i, value)])
    write_s = (time.perf_counter() - started) / COUNT
    started = time.perf_counter()
    for i in range(COUNT):
        assert engine.get("data", head + b"%06d" % i) == value
    read_s = (time.perf_counter() - started) / COUNT
    engine.close()
print(f"{label}: write {write_s * 1e6:.0f} us/key, read {read_s * 1e6:.0f} us/key ({COUNT} keys, 600-byte bucket)")
