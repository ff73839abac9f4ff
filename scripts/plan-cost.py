"""What computing a staged plan costs the event loop (clusterplan.plan): PYTHONPATH=src .venv/bin/python scripts/plan-cost.py"""

import timeit

from dynastore.core import clusterplan
from dynastore.core.membership import ClusterState, Member, RingState
from dynastore.core.ring import claim


def state(count, size):
    members = tuple(Member(f"n{i}", "127.0.0.1", 9000 + i, 8098 + i) for i in range(count))
    s = ClusterState("c", members, RingState(1, "n0", claim({m.name: 1 for m in members}, size, 3).owners))
    s = clusterplan.stage_join(s.with_member(Member("j", "127.0.0.1", 9900, 9901, status="joining")), "j", "n0")
    return clusterplan.stage(s, "n1", "leave", "n0")


for count, size in ((3, 64), (20, 1024)):
    s = state(count, size)
    n = 20
    t = timeit.timeit(lambda: clusterplan.plan(s, 3), number=n) / n
    print(
        f"{count} nodes + a join and a leave, {size} partitions: {t * 1000:.1f} ms, {clusterplan.plan(s, 3).partitions_moved} partitions move"
    )
