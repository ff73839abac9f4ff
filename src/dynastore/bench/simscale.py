"""How membership and the ring scale past one machine, measured in the deterministic simulator.

Theory of operation
-------------------
For each cluster size N and ring size Q the simulator starts N nodes that already form one settled
cluster (`SimCluster(formed=True)`: one claimed ring, as if every node had joined and every transition
had finished), lets it run, then joins one more empty node and runs until every node holds the ring
that gives the newcomer its partitions. Every message crosses the real wire codec, so the bytes are
those a real node sends (before the framing and MAC of the peer link).

Each size is joined twice, first into the N nodes, then into the N+1:
- *as built*: the join's seed and the claimant also push the changed state to every member at once
  (clusterops.py), so a join reaches everyone in about one message delay and gossip only repairs;
- *gossip alone*: those pushes are dropped, so the change spreads only by the push-pull exchanges of
  one random peer per gossip interval, the epidemic whose rounds grow with log2 N. The seed is a node
  other than the claimant, so the claimant too learns of the join by gossip.

Rounds are simulated gossip intervals from the join's acknowledgement until every node (the newcomer
included) has (a) the newcomer's member record, (b) the final ring with the newcomer in it. The claim
is timed on its own (wall ms of `ring.claim` for one join, the function the claimant runs), and the
rings before and after give the partitions moved against the ideal Q/(S+1) for S nodes, the replica
sets that change (transfers) against N*Q/(S+1), and the balance of partitions and of replicas.

Heartbeats are all-to-all (every node pings every member each heartbeat interval): N*(N-1) messages per
interval, the one cost here that grows with N squared. Gossip, claim and transfers do not depend on
them, so these runs drop every ping at its sender and use a ten-minute interval (the table says so):
at 1,000 nodes the pings of the start alone are a million messages, most of a run's time. The
heartbeat traffic at the default one-second interval is reported from the measured message sizes.

Deterministic: a seed gives the same rounds and bytes (wall times vary). A benchmark: the node runtime
must never import it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import msgpack

from dynastore.core import membership, messages
from dynastore.core.effects import ClientJoin
from dynastore.core.messages import GossipDigest, GossipState, Message, Ok, Ping, Pong
from dynastore.core.ring import Ring, claim, spacing_violations
from dynastore.settings import Settings
from dynastore.sim.cluster import SimCluster

# (nodes, ring sizes) measured by default: ring sizes with at least four partitions per node.
SIZES_DEFAULT: tuple[tuple[int, tuple[int, ...]], ...] = ((10, (256, 1024, 4096)), (100, (1024, 4096)), (1000, (4096,)))
PARTITIONS_PER_NODE_MIN = 4
NODES_MAX = 2000
ROUNDS_MAX = 200
# How often (simulated ms) convergence is looked at: rounds are reported to a quarter of an interval.
LOOK_EVERY_FRACTION = 4
# Every node pings every member when it starts and then once per interval; ten minutes leaves the
# pings of the start only (dropped at their senders, see above).
HEARTBEAT_INTERVAL_MS_DEFAULT = 600_000
CLAIM_REPEATS = 3


@dataclass(frozen=True, slots=True)
class Convergence:
    """Gossip intervals from the join's acknowledgement until every node had what is named."""

    member_rounds: float
    ring_rounds: float
    messages: dict[str, int]
    message_bytes: dict[str, int]
    wall_s: float


@dataclass(frozen=True, slots=True)
class ScaleResult:
    nodes: int
    ring_size: int
    n_val: int
    seed: int
    gossip_interval_ms: int
    heartbeat_interval_ms: int
    log2_nodes: float
    pushed: Convergence
    gossip_only: Convergence
    digest_bytes: int
    state_bytes: int
    members_bytes: int
    ring_bytes: int
    ping_bytes: int
    pong_bytes: int
    claim_ms: float
    moved: int
    moved_ideal: float
    replica_moves: int
    replica_moves_ideal: float
    balance_max_over_mean: float
    balance_promise: float
    replica_balance_max_over_mean: float
    spacing_violations: int
    formed_wall_s: float

    @property
    def heartbeat_bytes_per_node_s(self) -> float:
        """Bytes a node sends in pings and pongs per second at the default one-second interval."""
        return (self.nodes - 1) * (self.ping_bytes + self.pong_bytes)


def _wire_bytes(msg: Message) -> int:
    return len(msgpack.packb(messages.to_wire(msg), use_bin_type=True))


def _drop_pings(src: str, dst: str, msg: Message) -> bool:
    return isinstance(msg, Ping)


class _PushFilter:
    """Drops pushed states (a GossipState no exchange asked for) and lets gossip exchanges through.

    An exchange is digest -> GossipState(reply=True) -> GossipState(reply=False) back; a reply=False
    state is the last leg of an exchange only when its receiver sent the sender a reply=True state.
    """

    def __init__(self) -> None:
        self.asked: Counter[tuple[str, str]] = Counter()

    def __call__(self, src: str, dst: str, msg: Message) -> bool:
        if isinstance(msg, Ping):
            return True
        if not isinstance(msg, GossipState):
            return False
        if msg.reply:
            self.asked[(src, dst)] += 1
            return False
        if self.asked[(dst, src)] > 0:
            self.asked[(dst, src)] -= 1
            return False
        return True


def _form(nodes: int, ring_size: int, n_val: int, seed: int, heartbeat_ms: int) -> tuple[SimCluster, float]:
    settings = Settings(ring_size=ring_size, n_val=n_val, heartbeat_interval_ms=heartbeat_ms)
    started = time.monotonic()
    cluster = SimCluster(nodes, settings, seed=seed, formed=True)
    cluster.faults.drop = _drop_pings
    # Long enough for every node to have gossiped and heard from its peers at least once.
    cluster.settle(2 * settings.gossip_interval_ms)
    return cluster, time.monotonic() - started


def join_one(cluster: SimCluster, seed_node: str, gossip_only: bool) -> Convergence:
    """Join one empty node through `seed_node` and run until every node holds the ring that gives it
    its partitions (bounded by ROUNDS_MAX gossip intervals)."""
    cluster.faults.drop = _PushFilter() if gossip_only else _drop_pings
    newcomer = f"n{len(cluster.nodes)}"
    cluster.add_node(newcomer)
    before_count, before_bytes = Counter(cluster.sent_count), Counter(cluster.sent_bytes)
    started = time.monotonic()
    reply = cluster.request(newcomer, ClientJoin(seed_node, 1))
    assert isinstance(reply, Ok), reply
    joined_ms = cluster.now_ms
    interval = cluster.settings.gossip_interval_ms
    step_ms = max(1, interval // LOOK_EVERY_FRACTION)
    # Only nodes whose state changed since the last look are looked at again.
    seen: dict[str, int] = {}
    knows: set[str] = set()
    settled: set[str] = set()
    member_rounds = math.nan
    while cluster.now_ms - joined_ms < ROUNDS_MAX * interval:
        for name, node in cluster.nodes.items():
            core = node._core
            if core is None or seen.get(name) == id(core.cluster):
                continue
            state = core.cluster
            seen[name] = id(state)
            if state.member(newcomer) is not None:
                knows.add(name)
            if state.ring.next_owners is None and newcomer in state.ring.ring.members:
                settled.add(name)
            else:
                settled.discard(name)
        elapsed_rounds = (cluster.now_ms - joined_ms) / interval
        if math.isnan(member_rounds) and len(knows) == len(cluster.nodes):
            member_rounds = elapsed_rounds
        if len(settled) == len(cluster.nodes):
            break
        cluster.settle(step_ms)
    ring_rounds = (cluster.now_ms - joined_ms) / interval if len(settled) == len(cluster.nodes) else math.nan
    cluster.faults.drop = _drop_pings
    counts = {k: v - before_count[k] for k, v in cluster.sent_count.items() if v - before_count[k]}
    sizes = {k: v - before_bytes[k] for k, v in cluster.sent_bytes.items() if v - before_bytes[k]}
    return Convergence(member_rounds, ring_rounds, counts, sizes, round(time.monotonic() - started, 2))


def _replica_counts(ring: Ring, n_val: int) -> Counter[str]:
    counts: Counter[str] = Counter()
    for partition in range(ring.size):
        counts.update(ring.replicas(partition, n_val))
    return counts


def _max_over_mean(counts: Counter[str], members: int) -> float:
    mean = sum(counts.values()) / members
    return max(counts.values()) / mean


def measure(
    nodes: int, ring_size: int, n_val: int = 3, seed: int = 1, heartbeat_ms: int = HEARTBEAT_INTERVAL_MS_DEFAULT
) -> ScaleResult:
    """One row of the table: a join as built into N nodes, then one by gossip alone into the N+1
    (one formed cluster serves both: forming a thousand nodes is most of a run), the claim of the
    first join on its own, and the shape of its ring."""
    cluster, formed_s = _form(nodes, ring_size, n_val, seed, heartbeat_ms)
    pushed = join_one(cluster, "n0", gossip_only=False)
    after_first = cluster.core("n0").cluster
    # Gossip alone: a seed that is not the claimant (n0), so the claimant too learns by gossip.
    gossip = join_one(cluster, f"n{nodes - 1}", gossip_only=True)
    names = [f"n{i}" for i in range(nodes)]
    weights = {name: 1 for name in names}
    before = claim(weights, ring_size, n_val)
    joined = {**weights, f"n{nodes}": 1}
    times = []
    for _ in range(CLAIM_REPEATS):
        started = time.perf_counter()
        after = claim(joined, ring_size, n_val, before)
        times.append((time.perf_counter() - started) * 1000)
    final = after_first
    assert final.ring.owners == after.owners, "the simulated claimant claimed another ring"
    moved = sum(1 for a, b in zip(before.owners, after.owners, strict=True) if a != b)
    replica_moves = sum(len(set(after.replicas(p, n_val)) - set(before.replicas(p, n_val))) for p in range(ring_size))
    members = nodes + 1
    state = membership.encode(final)
    members_bytes = sum(len(membership.encode_member(m)) for m in final.members)
    ring_bytes = len(msgpack.packb(membership._ring_to_wire(final.ring), use_bin_type=True))
    return ScaleResult(
        nodes=nodes,
        ring_size=ring_size,
        n_val=n_val,
        seed=seed,
        gossip_interval_ms=cluster.settings.gossip_interval_ms,
        heartbeat_interval_ms=heartbeat_ms,
        log2_nodes=round(math.log2(members), 2),
        pushed=pushed,
        gossip_only=gossip,
        digest_bytes=_wire_bytes(GossipDigest(final.digest())),
        state_bytes=_wire_bytes(GossipState(state, True)),
        members_bytes=members_bytes,
        ring_bytes=ring_bytes,
        ping_bytes=_wire_bytes(Ping(1_000_000)),
        pong_bytes=_wire_bytes(Pong(1_000_000)),
        claim_ms=round(statistics.median(times), 2),
        moved=moved,
        moved_ideal=round(ring_size / members, 2),
        replica_moves=replica_moves,
        replica_moves_ideal=round(n_val * ring_size / members, 2),
        balance_max_over_mean=round(_max_over_mean(after.counts(), members), 3),
        balance_promise=round(math.ceil(ring_size / members) / (ring_size / members), 3),
        replica_balance_max_over_mean=round(_max_over_mean(_replica_counts(after, n_val), members), 3),
        spacing_violations=spacing_violations(after.owners, n_val),
        formed_wall_s=round(formed_s, 2),
    )


def _rounds(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:g}"


def format_table(results: Sequence[ScaleResult], command: str = "") -> str:
    """The README's table: one row per (N, Q), rounds of both runs, bytes, claim, moves, balance."""
    if not results:
        return "no sizes measured"
    first = results[0]
    lines = [f"Command: `{command}`", ""] if command else []
    lines += [
        f"One join into a settled cluster of N simulated nodes (n_val={first.n_val}, gossip every "
        f"{first.gossip_interval_ms} ms; heartbeats every {first.heartbeat_interval_ms} ms and dropped in these runs, "
        f"seed {first.seed}). Rounds are gossip intervals until every node had the newcomer's member record "
        "/ the final ring; 'as built' includes the pushes of the seed and the claimant, 'gossip' drops them.",
        "",
        "| N | Q | log2 N | rounds as built (member / ring) | rounds by gossip alone (member / ring) "
        "| digest B | state B (members + ring) | claim ms | moved (ideal Q/(S+1)) | replica moves (ideal) "
        "| max/mean partitions (promise) | max/mean replicas | heartbeat KB/s per node at 1 s | sim wall s |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        wall = r.formed_wall_s + r.pushed.wall_s + r.gossip_only.wall_s
        hb = r.heartbeat_bytes_per_node_s / 1024
        lines.append(
            f"| {r.nodes:,} | {r.ring_size:,} | {r.log2_nodes:g} "
            f"| {_rounds(r.pushed.member_rounds)} / {_rounds(r.pushed.ring_rounds)} "
            f"| {_rounds(r.gossip_only.member_rounds)} / {_rounds(r.gossip_only.ring_rounds)} "
            f"| {r.digest_bytes} | {r.state_bytes:,} ({r.members_bytes:,} + {r.ring_bytes:,}) | {r.claim_ms:g} "
            f"| {r.moved} ({r.moved_ideal:g}) | {r.replica_moves} ({r.replica_moves_ideal:g}) "
            f"| {r.balance_max_over_mean:g} ({r.balance_promise:g}) | {r.replica_balance_max_over_mean:g} "
            f"| {hb:,.1f} | {wall:,.0f} |"
        )
    return "\n".join(lines)


def _sizes(nodes: Sequence[int] | None, ring_sizes: Sequence[int] | None) -> list[tuple[int, int]]:
    if nodes is None and ring_sizes is None:
        return [(n, q) for n, qs in SIZES_DEFAULT for q in qs]
    chosen_nodes = nodes or [n for n, _ in SIZES_DEFAULT]
    chosen_rings = ring_sizes or sorted({q for _, qs in SIZES_DEFAULT for q in qs})
    return [(n, q) for n in chosen_nodes for q in chosen_rings if q >= PARTITIONS_PER_NODE_MIN * (n + 1)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dynastore bench sim-scale",
        description="Membership and ring at 10, 100 and 1,000 simulated nodes: gossip rounds after a join, "
        "gossip message bytes, claim time, partitions moved, balance.",
    )
    parser.add_argument("--nodes", type=int, nargs="+", help="cluster sizes N (default 10 100 1000)")
    parser.add_argument("--ring-sizes", type=int, nargs="+", help="ring sizes Q, powers of two (default 256 1024 4096)")
    parser.add_argument("--n", type=int, default=3, dest="n_val", help="replicas per key (default 3)")
    parser.add_argument("--seed", type=int, default=1, help="simulation seed (default 1)")
    parser.add_argument(
        "--heartbeat-interval-ms",
        type=int,
        default=HEARTBEAT_INTERVAL_MS_DEFAULT,
        help=f"heartbeat interval of the simulated nodes (default {HEARTBEAT_INTERVAL_MS_DEFAULT})",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="directory of sim-scale.json/.md")
    args = parser.parse_args(argv)
    # Bounds checked before anything runs, so that a typo is an error rather than an hour of simulation.
    for n in args.nodes or []:
        if not 1 <= n <= NODES_MAX:
            parser.error(f"--nodes must be from 1 to {NODES_MAX}")
    for q in args.ring_sizes or []:
        if q < 1 or q & (q - 1) or q > 1 << 16:
            parser.error("--ring-sizes must be powers of two up to 65536")
    if not 1 <= args.n_val <= 7:
        parser.error("--n must be from 1 to 7")
    if not 100 <= args.heartbeat_interval_ms <= 600_000:
        parser.error("--heartbeat-interval-ms must be from 100 to 600000")
    sizes = _sizes(args.nodes, args.ring_sizes)
    if not sizes:
        parser.error(f"no (nodes, ring size) pair has {PARTITIONS_PER_NODE_MIN} partitions per node")
    results: list[ScaleResult] = []
    for nodes, ring_size in sizes:
        started = time.monotonic()
        result = measure(nodes, ring_size, args.n_val, args.seed, args.heartbeat_interval_ms)
        results.append(result)
        print(
            f"N={nodes} Q={ring_size}: rounds {_rounds(result.pushed.ring_rounds)} as built, "
            f"{_rounds(result.gossip_only.ring_rounds)} by gossip; {time.monotonic() - started:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in results:
        row = asdict(r)
        row["heartbeat_bytes_per_node_s"] = r.heartbeat_bytes_per_node_s
        for run in ("pushed", "gossip_only"):
            # A run that did not converge within ROUNDS_MAX has no rounds: null in JSON.
            for key in ("member_rounds", "ring_rounds"):
                if math.isnan(row[run][key]):
                    row[run][key] = None
        rows.append(row)
    (args.out / "sim-scale.json").write_text(json.dumps({"results": rows}, indent=2, allow_nan=False))
    table = format_table(
        results, " ".join(["dynastore bench sim-scale", *(argv if argv is not None else sys.argv[1:])])
    )
    (args.out / "sim-scale.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
