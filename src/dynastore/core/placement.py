"""Where a key's replicas live while the ring moves, and which transfers make the move.

Theory of operation
-------------------
During a transition the cluster state holds the current ring (`owners`) and the next one
(`next_owners`). For a key's partition p and its bucket's n_val:
- old = the N primaries under the current ring, new = the N primaries under the next ring;
- receivers = new - old: the nodes that must be given p's data before they can serve it;
- p is *switched* once every receiver has recorded (p, receiver) in `done`.
Until p is switched, reads go to the old replicas, and writes go to the old replicas *and* the
receivers, so nothing written during the transfer is missed by the new owners. Once switched, the
next ring's preference list serves p. The old owner keeps its copy until p is switched (it is still a
replica for reads), and hands off whatever it still holds afterwards (see the stray sweep in handoff.py).

Each receiver pulls p from a *source*: the old replica that leaves p's replica set in the same
position (so every copy that disappears is first copied), or, when no replica leaves or the leaver is
gone for good, the first old replica still in the cluster. Buckets with different n_vals may need
several sources for one (partition, receiver).

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dynastore.core.membership import ClusterState, RingState
from dynastore.core.ring import PreferenceList, Ring


@dataclass(frozen=True, slots=True)
class Placement:
    """The preference list serving a partition now, and extra write targets during a transfer."""

    plist: PreferenceList
    receivers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Transfer:
    """`receiver` must pull partition `partition` from each of `sources` (in order)."""

    partition: int
    receiver: str
    sources: tuple[str, ...]


def transition_id(ring: RingState) -> bytes:
    """Names the transition a checkpoint belongs to; a new transition never reuses old checkpoints."""
    return f"{ring.version}:{ring.claimant}".encode()


def receivers(ring: RingState, partition: int, n_val: int) -> tuple[str, ...]:
    nxt = ring.next_ring
    if nxt is None:
        return ()
    old = ring.ring.replicas(partition, n_val)
    return tuple(node for node in nxt.replicas(partition, n_val) if node not in old)


def switched(ring: RingState, partition: int, n_val: int) -> bool:
    return all((partition, node) in ring.done for node in receivers(ring, partition, n_val))


def placement(ring: RingState, partition: int, n_val: int) -> Placement:
    nxt = ring.next_ring
    if nxt is None or switched(ring, partition, n_val):
        serving = nxt if nxt is not None else ring.ring
        return Placement(serving.preference_list(partition, n_val))
    return Placement(ring.ring.preference_list(partition, n_val), receivers(ring, partition, n_val))


def n_vals_in_use(state: ClusterState, default_n_val: int) -> list[int]:
    found = {default_n_val}
    # A bucket type's n_val is its buckets' unless they set their own.
    records = [props.as_dict() for _, props in state.buckets] + [t.as_dict() for _, t in state.types]
    for props in records:
        value = props.get("n_val")
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            found.add(value)
    return sorted(found)


def all_switched(ring: RingState, n_vals: Iterable[int]) -> bool:
    values = list(n_vals)
    return all(switched(ring, p, n) for p in range(len(ring.owners)) for n in values)


def transfers(state: ClusterState, n_vals: Iterable[int], receiver: str | None = None) -> list[Transfer]:
    """Every transfer of the current transition not yet done (for one receiver, or all)."""
    ring = state.ring
    nxt = ring.next_ring
    if nxt is None:
        return []
    gone = frozenset(m.name for m in state.members if m.status == "removed")
    plan = _plan(ring.ring, nxt, tuple(n_vals), gone)
    done = ring.done
    return [t for t in plan if (receiver is None or t.receiver == receiver) and (t.partition, t.receiver) not in done]


# Transfer plans by (current ring, next ring, n_vals, nodes gone): each receiver asks after every
# batch it pulls, and the plan is a walk of all Q partitions, so at thousands of partitions planning
# again each time would cost Q per batch. An entry holds its rings, so their ids stay theirs.
_PLANS: dict[tuple[int, int, tuple[int, ...], frozenset[str]], tuple[Ring, Ring, tuple[Transfer, ...]]] = {}
PLANS_MAX = 16


def _plan(current: Ring, nxt: Ring, values: tuple[int, ...], gone: frozenset[str]) -> tuple[Transfer, ...]:
    key = (id(current), id(nxt), values, gone)
    hit = _PLANS.get(key)
    if hit is not None and hit[0] is current and hit[1] is nxt:
        return hit[2]
    out: list[Transfer] = []
    for partition in range(current.size):
        sources: dict[str, list[str]] = {}
        for n_val in values:
            old = current.replicas(partition, n_val)
            new = nxt.replicas(partition, n_val)
            leavers = [node for node in old if node not in new]
            entering = [node for node in new if node not in old]
            fallback = next((node for node in old if node not in gone), None)
            for i, node in enumerate(entering):
                source = leavers[i] if i < len(leavers) and leavers[i] not in gone else fallback
                chosen = sources.setdefault(node, [])
                # No source at all means every old replica is gone for good: there is nothing left to
                # copy, and the transfer completes empty rather than blocking the transition forever.
                if source is not None and source != node and source not in chosen:
                    chosen.append(source)
        for node, srcs in sorted(sources.items()):
            out.append(Transfer(partition, node, tuple(srcs)))
    plan = tuple(out)
    if len(_PLANS) >= PLANS_MAX:
        _PLANS.clear()
    _PLANS[key] = (current, nxt, plan)
    return plan
