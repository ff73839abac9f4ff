"""Wall time of the longest anti-entropy tick after an unclean restart, with ~15,600 keys per
partition (what 1 M keys on 64 partitions gives), in the simulator (memory disk, one node).

PYTHONPATH=src .venv/bin/python scripts/aae-step-time.py [KEYS]  (two partitions hold KEYS in all)."""

import gc
import sys
import time

from dynastore.core.objects import Content
from dynastore.core.versions import Context, Dot, update
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster

KEYS = int(sys.argv[1]) if len(sys.argv) > 1 else 31_200
settings = Settings(ring_size=2, n_val=1, r=1, w=1, hinted_handoff_enabled=False, read_repair_enabled=False)
c = SimCluster(1, settings)
core = c.core("n0")
for i in range(KEYS):
    obj = update(None, Context(), Dot(b"writer#1", i + 1), Content(b"x" * 1024, last_modified_us=1), 1)
    core._merge_into_data(b"b", b"k%07d" % i, obj, False, c.now_ms)
    if i % 1000 == 999:
        c._flush("n0")
c._flush("n0")
c.crash("n0")
c.restart("n0")
core = c.core("n0")
ticks = []
tick = core.aae.on_tick


def timed(now_ms: int) -> None:
    t = time.perf_counter()
    tick(now_ms)
    ticks.append(time.perf_counter() - t)


core.aae.on_tick = timed

gc.collect()
gc.freeze()
start = time.perf_counter()
done = c.run_until(lambda: core.aae.stats.index_verifications >= settings.ring_size and not core.aae.build_queue
                   and getattr(core.aae, "_build", None) is None, 600_000)
ticks_sorted = sorted(range(len(ticks)), key=lambda i: -ticks[i])[:5]
print([(i, round(ticks[i] * 1000)) for i in ticks_sorted])
print(f"keys={KEYS} done={done} ticks={len(ticks)} longest_tick_ms={max(ticks) * 1000:.0f} "
      f"sum_ticks_s={sum(ticks):.2f} wall_s={time.perf_counter() - start:.2f}")
