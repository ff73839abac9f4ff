"""The writer process of test_durability.py: numbered batches, each reported once `write` returns.

Run as `python durability_writer.py KIND DIRECTORY`. It resumes after the last batch the store holds,
then writes batch after batch (each also recording itself as `meta/last-batch`, so a batch spans two
areas). It prints `writing N` just before it hands batch N to the engine, so that the test can aim
its kill inside a write, and `synced N` as soon as the engine has acknowledged batch N. It never stops by
itself before BATCHES_MAX: the test kills it with SIGKILL. The test imports the key and value
functions from here, so writer and checker can never disagree on what a batch holds.
"""

from __future__ import annotations

import sys
from pathlib import Path

from dynastore.storage import Op, open_engine

OPS_PER_BATCH = 200
VALUE_BYTES = 300
BATCHES_MAX = 100_000
LAST_BATCH_KEY = b"last-batch"


def batch_key(batch: int, index: int) -> bytes:
    return b"batch-%08d-%04d" % (batch, index)


def batch_of(key: bytes) -> int:
    return int(key[6:14])


def batch_value(batch: int, index: int) -> bytes:
    return ((b"%08d:%04d:" % (batch, index)) * VALUE_BYTES)[:VALUE_BYTES]


def batch_ops(batch: int) -> list[Op]:
    ops = [Op("data", batch_key(batch, index), batch_value(batch, index)) for index in range(OPS_PER_BATCH)]
    ops.append(Op("meta", LAST_BATCH_KEY, b"%d" % batch))
    return ops


def main(kind: str, directory: Path) -> None:
    engine = open_engine(kind, directory, durable=True)
    last = engine.get("meta", LAST_BATCH_KEY)
    first = 0 if last is None else int(last) + 1
    for batch in range(first, first + BATCHES_MAX):
        ops = batch_ops(batch)
        print(f"writing {batch}", flush=True)
        engine.write(ops)
        print(f"synced {batch}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
