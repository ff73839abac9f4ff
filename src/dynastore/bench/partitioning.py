"""Dynamo's partitioning experiment (DeCandia et al., SOSP 2007, section 6.2): how evenly load spreads.

Theory of operation
-------------------
Three placement strategies sit behind one interface, `PlacementStrategy`: given a 128-bit ring
position, the N distinct nodes that serve it.

1. `RandomTokens`: every node draws T tokens uniformly at random; a position belongs to the first token
   clockwise, and its preference list is the first N distinct owners met walking clockwise from there.
   Partitioning and placement are one and the same.
2. `RandomTokensEqualPartitions`: the same tokens, but the ring is cut into Q equal partitions and a
   partition is placed by looking up its last position among the tokens. Partitioning (Q ranges) and
   placement (tokens) are decoupled.
3. `EqualPartitions`: Q equal partitions, Q/S per node, owned as the product's own claim
   (`dynastore.core.ring`) decides: the strategy dynastore runs.

The paper compares them at the same size of membership metadata per node (its Figure 8). Here that is
the number of ring entries every node must know: S*T tokens for strategies 1 and 2 (the partitions of
strategy 2 follow from Q alone), Q partition owners for strategy 3. Our ring needs Q to be a power of
two, so by default Q is the power of two nearest S*T, strategy 2 uses the same Q, and the table prints
every strategy's entry count.

The workload is K items, each hashed to a key so that popularity is independent of ring position,
requested by a zipfian stream and by a uniform one. By default a request loads every node of its key's
preference list, because Dynamo sends each get and put to all N of them; the `coordinator` load model
counts the first node only. Efficiency is mean node load / max node load; a node is in balance when its
load is within 15% of the mean (the paper's threshold). A third measure, `space`, is the efficiency of
the share of the hash space each node serves: the limit of a uniform stream over infinitely many keys,
free of sampling noise, which separates the strategy's own imbalance from the workload's.

Every random choice comes from a `random.Random(seed)`, so a seed reproduces a run exactly. This module
is a benchmark: the node runtime must never import it.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, get_args

from dynastore.bench.zipf import THETA_DEFAULT, ZipfianGenerator
from dynastore.core.hashing import RING_BITS, RING_TOP, key_position, partition_of
from dynastore.core.ring import Ring, claim

Load = Literal["replicas", "coordinator"]
LOADS: tuple[Load, ...] = get_args(Load)

IN_BALANCE_TOLERANCE = 0.15
BENCH_BUCKET = b"bench-partitioning"


class PlacementStrategy(Protocol):
    """Where a ring position is served, and how much a node must know to work that out."""

    @property
    def name(self) -> str: ...

    def preference_list(self, position: int, n: int) -> tuple[str, ...]:
        """The first n distinct nodes serving `position` (every node, when there are fewer than n)."""
        ...

    def metadata_entries(self) -> int:
        """How many ring entries (tokens or partition owners) every node must store."""
        ...

    def boundaries(self) -> tuple[int, ...]:
        """Sorted positions ending the segments: all of (previous boundary, boundary] share one list.

        The first segment wraps: it runs from just after the last boundary through 0 to the first.
        """
        ...


def partition_ends(ring_size: int) -> tuple[int, ...]:
    """The last position of each of `ring_size` equal partitions, in ring order."""
    assert ring_size > 0 and ring_size & (ring_size - 1) == 0, ring_size
    step = RING_TOP // ring_size
    return tuple((index + 1) * step - 1 for index in range(ring_size))


@dataclass(frozen=True, slots=True)
class TokenRing:
    """Random tokens, sorted, each with its owner: the membership of strategies 1 and 2."""

    tokens: tuple[int, ...]
    owners: tuple[str, ...]
    _walks: dict[tuple[int, int], tuple[str, ...]] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        assert self.tokens, "a token ring needs at least one token"
        assert len(self.tokens) == len(self.owners), (len(self.tokens), len(self.owners))
        assert all(a < b for a, b in zip(self.tokens, self.tokens[1:], strict=False)), "tokens unsorted"

    @classmethod
    def draw(cls, nodes: Sequence[str], tokens_per_node: int, rng: random.Random) -> TokenRing:
        """`tokens_per_node` tokens for every node, uniformly at random over the ring."""
        assert tokens_per_node >= 1, tokens_per_node
        taken: dict[int, str] = {}
        for node in nodes:
            for _ in range(tokens_per_node):
                token = rng.getrandbits(RING_BITS)
                # A shared token would make ownership depend on sort stability; a redraw is nearly free.
                while token in taken:
                    token = rng.getrandbits(RING_BITS)
                taken[token] = node
        ordered = sorted(taken)
        return cls(tuple(ordered), tuple(taken[token] for token in ordered))

    @property
    def members(self) -> frozenset[str]:
        return frozenset(self.owners)

    def walk(self, position: int, n: int) -> tuple[str, ...]:
        """The first n distinct owners clockwise from the first token at or after `position`."""
        assert 0 <= position < RING_TOP, position
        assert n >= 1, n
        size = len(self.tokens)
        start = bisect_left(self.tokens, position)
        if start == size:
            # Past the last token the ring wraps: the first token owns the top of the hash space.
            start = 0
        cached = self._walks.get((start, n))
        if cached is not None:
            return cached
        seen: set[str] = set()
        found: list[str] = []
        for step in range(size):
            owner = self.owners[(start + step) % size]
            if owner not in seen:
                seen.add(owner)
                found.append(owner)
                if len(found) == n:
                    break
        walk = tuple(found)
        self._walks[(start, n)] = walk
        return walk


@dataclass(frozen=True, slots=True)
class RandomTokens:
    """Strategy 1: T random tokens per node; a key belongs to the first token clockwise."""

    tokens: TokenRing
    name = "1: T random tokens"

    def preference_list(self, position: int, n: int) -> tuple[str, ...]:
        return self.tokens.walk(position, n)

    def metadata_entries(self) -> int:
        return len(self.tokens.tokens)

    def boundaries(self) -> tuple[int, ...]:
        return self.tokens.tokens


@dataclass(frozen=True, slots=True)
class RandomTokensEqualPartitions:
    """Strategy 2: Q equal partitions, each placed where its last position falls among random tokens."""

    tokens: TokenRing
    ring_size: int
    name = "2: T tokens + Q partitions"

    def __post_init__(self) -> None:
        assert self.ring_size > 0 and self.ring_size & (self.ring_size - 1) == 0, self.ring_size

    def preference_list(self, position: int, n: int) -> tuple[str, ...]:
        # The partition's last position rather than the next one's first, so the top partition needs
        # no wrap; the two differ only when a token sits exactly on the boundary.
        partition = partition_of(position, self.ring_size)
        end = (partition + 1) * (RING_TOP // self.ring_size) - 1
        return self.tokens.walk(end, n)

    def metadata_entries(self) -> int:
        # Partition bounds follow from Q; only the tokens are membership a node must learn.
        return len(self.tokens.tokens)

    def boundaries(self) -> tuple[int, ...]:
        return partition_ends(self.ring_size)


@dataclass(frozen=True, slots=True)
class EqualPartitions:
    """Strategy 3: Q equal partitions, Q/S per node, owned as dynastore's own ring claims them."""

    ring: Ring
    name = "3: Q/S partitions/node"

    @classmethod
    def claim(cls, nodes: Sequence[str], ring_size: int, n_val: int) -> EqualPartitions:
        return cls(claim(dict.fromkeys(nodes, 1), ring_size, n_val))

    def preference_list(self, position: int, n: int) -> tuple[str, ...]:
        # Ring.partition_of hashes a (bucket, key) pair to exactly this partition; we start from the
        # position so that all three strategies see the same keys through the same interface.
        return self.ring.replicas(partition_of(position, self.ring.size), n)

    def metadata_entries(self) -> int:
        return self.ring.size

    def boundaries(self) -> tuple[int, ...]:
        return partition_ends(self.ring.size)


def ring_size_for(nodes: int, tokens_per_node: int) -> int:
    """The power of two nearest (by ratio) to nodes * tokens_per_node, and at least `nodes`.

    Nearest by ratio because metadata budgets compare as ratios; a tie goes up.
    """
    if nodes < 1 or tokens_per_node < 1:
        raise ValueError(f"need at least one node and one token per node, not {nodes} and {tokens_per_node}")
    budget = nodes * tokens_per_node
    lower = 1 << (budget.bit_length() - 1)
    upper = lower if lower == budget else lower * 2
    chosen = lower if budget * budget < lower * upper else upper
    # claim() cannot give every node a partition when there are fewer partitions than nodes.
    while chosen < nodes:
        chosen *= 2
    return chosen


# --- The experiment -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setup:
    """Every parameter of one run, so a printed table says what it measured."""

    nodes: int
    n_val: int
    tokens_per_node: int
    ring_size: int
    strategy2_ring_size: int
    keys: int
    requests: int
    trials: int
    seed: int
    load: Load
    theta: float


@dataclass(frozen=True, slots=True)
class Balance:
    """How evenly one stream loaded the nodes, averaged over trials."""

    efficiency: float
    efficiency_sd: float
    in_balance: float


@dataclass(frozen=True, slots=True)
class Result:
    """One strategy's balance under one setup."""

    setup: Setup
    strategy: str
    metadata_entries: int
    partitions: int | None
    space: Balance
    uniform: Balance
    zipfian: Balance


def node_names(nodes: int) -> tuple[str, ...]:
    return tuple(f"node-{index:03d}" for index in range(nodes))


def balance(loads: Sequence[int]) -> tuple[float, float]:
    """(mean / max, share of nodes within 15% of the mean) for one load per node, idle nodes included."""
    assert loads and max(loads) > 0, loads
    mean = sum(loads) / len(loads)
    in_balance = sum(1 for load in loads if abs(load - mean) < IN_BALANCE_TOLERANCE * mean)
    return mean / max(loads), in_balance / len(loads)


def request_loads(
    placed: Sequence[tuple[str, ...]], counts: Sequence[int], names: Sequence[str], load: Load
) -> list[int]:
    """Requests served per node, given each key's preference list and how often the key was asked for."""
    totals = dict.fromkeys(names, 0)
    for nodes, count in zip(placed, counts, strict=True):
        if not count:
            continue
        if load == "coordinator":
            totals[nodes[0]] += count
        else:
            for node in nodes:
                totals[node] += count
    return [totals[name] for name in names]


def space_loads(strategy: PlacementStrategy, n_val: int, names: Sequence[str], load: Load) -> list[int]:
    """Hash space served per node: what a uniform stream over infinitely many keys converges to."""
    totals = dict.fromkeys(names, 0)
    bounds = strategy.boundaries()
    previous = bounds[-1]
    for bound in bounds:
        length = (bound - previous) % RING_TOP or RING_TOP
        nodes = strategy.preference_list(bound, n_val)
        for node in nodes[:1] if load == "coordinator" else nodes:
            totals[node] += length
        previous = bound
    return [totals[name] for name in names]


def tally(ranks: Sequence[int], items: int) -> list[int]:
    """How many times each item appears among `ranks`."""
    counts = [0] * items
    for rank in ranks:
        counts[rank] += 1
    return counts


def _check(setup: Setup) -> None:
    if setup.nodes < 1:
        raise ValueError("the experiment needs at least one node")
    if not 1 <= setup.n_val <= setup.nodes:
        raise ValueError(f"N must be from 1 to the number of nodes ({setup.nodes}), not {setup.n_val}")
    if setup.tokens_per_node < 1:
        raise ValueError("every node needs at least one token")
    for size in (setup.ring_size, setup.strategy2_ring_size):
        if size < setup.nodes or size & (size - 1):
            raise ValueError(f"ring size {size} must be a power of two, at least the number of nodes")
    if setup.keys < 2 or setup.requests < 1 or setup.trials < 1:
        raise ValueError("the experiment needs at least two keys, one request and one trial")
    if setup.load not in LOADS:
        raise ValueError(f"load model must be one of {', '.join(LOADS)}")
    if not 0.0 < setup.theta < 1.0:
        raise ValueError("zipfian theta must lie strictly between 0 and 1")


def run(
    nodes: int = 30,
    n_val: int = 3,
    tokens_per_node: int = 8,
    keys: int = 100_000,
    requests: int = 1_000_000,
    trials: int = 10,
    seed: int = 1,
    *,
    load: Load = "replicas",
    ring_size: int | None = None,
    strategy2_ring_size: int | None = None,
    theta: float = THETA_DEFAULT,
) -> list[Result]:
    """The three strategies at one metadata budget, averaged over `trials` independent draws.

    Each trial draws fresh tokens, a fresh set of keys and fresh request streams; within a trial all
    strategies see the same keys and requests, and strategies 1 and 2 the same tokens, so differences
    between rows come from placement alone. Strategy 3's ring is deterministic and claimed once.
    """
    q = ring_size if ring_size is not None else ring_size_for(nodes, tokens_per_node)
    setup = Setup(
        nodes=nodes,
        n_val=n_val,
        tokens_per_node=tokens_per_node,
        ring_size=q,
        strategy2_ring_size=strategy2_ring_size if strategy2_ring_size is not None else q,
        keys=keys,
        requests=requests,
        trials=trials,
        seed=seed,
        load=load,
        theta=theta,
    )
    _check(setup)
    names = node_names(nodes)
    equal = EqualPartitions.claim(names, setup.ring_size, n_val)
    zipf = ZipfianGenerator.create(keys, theta)
    master = random.Random(seed)
    outcomes = [_trial(setup, names, equal, zipf, random.Random(master.getrandbits(64))) for _ in range(trials)]
    return [
        Result(
            setup=setup,
            strategy=rows[0].strategy,
            metadata_entries=rows[0].metadata_entries,
            partitions=rows[0].partitions,
            space=_summarise([row.space for row in rows]),
            uniform=_summarise([row.uniform for row in rows]),
            zipfian=_summarise([row.zipfian for row in rows]),
        )
        for rows in zip(*outcomes, strict=True)
    ]


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One strategy in one trial: (efficiency, share in balance) for each measure."""

    strategy: str
    metadata_entries: int
    partitions: int | None
    space: tuple[float, float]
    uniform: tuple[float, float]
    zipfian: tuple[float, float]


def _trial(
    setup: Setup, names: Sequence[str], equal: EqualPartitions, zipf: ZipfianGenerator, rng: random.Random
) -> list[_Outcome]:
    tokens = TokenRing.draw(names, setup.tokens_per_node, rng)
    strategies: tuple[tuple[PlacementStrategy, int | None], ...] = (
        (RandomTokens(tokens), None),
        (RandomTokensEqualPartitions(tokens, setup.strategy2_ring_size), setup.strategy2_ring_size),
        (equal, setup.ring_size),
    )
    # A fresh salt per trial moves every key, so even the deterministic ring of strategy 3 sees
    # independent key placements across trials.
    salt = rng.getrandbits(64)
    positions = [key_position(BENCH_BUCKET, f"{salt:016x}-{item}".encode()) for item in range(setup.keys)]
    uniform_counts = tally(rng.choices(range(setup.keys), k=setup.requests), setup.keys)
    zipf_counts = tally(zipf.sample(rng, setup.requests), setup.keys)
    outcomes: list[_Outcome] = []
    for strategy, partitions in strategies:
        placed = [strategy.preference_list(position, setup.n_val) for position in positions]
        outcomes.append(
            _Outcome(
                strategy=strategy.name,
                metadata_entries=strategy.metadata_entries(),
                partitions=partitions,
                space=balance(space_loads(strategy, setup.n_val, names, setup.load)),
                uniform=balance(request_loads(placed, uniform_counts, names, setup.load)),
                zipfian=balance(request_loads(placed, zipf_counts, names, setup.load)),
            )
        )
    return outcomes


def _summarise(trials: Sequence[tuple[float, float]]) -> Balance:
    efficiencies = [efficiency for efficiency, _ in trials]
    spread = statistics.stdev(efficiencies) if len(efficiencies) > 1 else 0.0
    return Balance(
        efficiency=statistics.fmean(efficiencies),
        efficiency_sd=spread,
        in_balance=statistics.fmean(share for _, share in trials),
    )


# --- Presentation ---------------------------------------------------------------------------------


def format_table(results: Sequence[Result]) -> str:
    """A table with one row per strategy and budget, preceded by what was measured and how.

    The notes describe the first result's setup; rows of a sweep differ only in T and Q.
    """
    if not results:
        return "no results"
    first = results[0].setup
    hottest = ZipfianGenerator.create(first.keys, first.theta).probability(0)
    fair = (first.n_val if first.load == "replicas" else 1) / first.nodes
    model = (
        f"each request counts once on every one of the N={first.n_val} nodes of its key's preference list"
        if first.load == "replicas"
        else "each request counts once on the first node of its key's preference list (the coordinator)"
    )
    lines = [
        f"Dynamo (SOSP 2007) section 6.2 partitioning: {first.nodes} nodes, N={first.n_val}, "
        f"{first.keys} keys, {first.requests} requests per stream, mean of {first.trials} trials "
        f"(seed {first.seed})",
        f"load: {model}",
        "eff = mean node load / max node load (± sd over trials); in15 = share of nodes within 15% of mean",
        "space = eff of the hash space each node serves (uniform requests over infinitely many keys)",
        "entries = ring entries every node stores: S*T tokens (strategies 1, 2), Q owners (strategy 3);",
        "  Q must be a power of two, so it is the one nearest S*T, and strategy 2 uses the same Q",
        "  here: "
        + ", ".join(
            f"S*T={budget} -> Q={size} ({size / budget - 1:+.1%})"
            for budget, size in sorted({(r.setup.nodes * r.setup.tokens_per_node, r.setup.ring_size) for r in results})
        ),
        f"zipfian: theta {first.theta} (YCSB); the hottest key alone draws {hottest:.1%} of requests, "
        f"a node's fair share is {fair:.1%}",
        "",
    ]
    header = (
        f"{'strategy':<27} {'T':>4} {'Q':>6} {'entries':>8} {'space eff':>10} "
        f"{'uniform eff':>13} {'in15':>5} {'zipf eff':>13} {'in15':>5}"
    )
    lines += [header, "-" * len(header)]
    previous_budget: tuple[int, int] | None = None
    for result in results:
        budget = (result.setup.tokens_per_node, result.setup.ring_size)
        if previous_budget is not None and budget != previous_budget:
            lines.append("")
        previous_budget = budget
        partitions = "-" if result.partitions is None else str(result.partitions)
        lines.append(
            f"{result.strategy:<27} {result.setup.tokens_per_node:>4} {partitions:>6} "
            f"{result.metadata_entries:>8} {result.space.efficiency:>10.3f} "
            f"{_efficiency(result.uniform):>13} {result.uniform.in_balance:>5.0%} "
            f"{_efficiency(result.zipfian):>13} {result.zipfian.in_balance:>5.0%}"
        )
    return "\n".join(lines)


def _efficiency(balance: Balance) -> str:
    return f"{balance.efficiency:.3f}±{balance.efficiency_sd:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="dynastore bench partitioning",
        description="Dynamo's partitioning experiment: load balance of three placement strategies "
        "at equal membership metadata.",
    )
    parser.add_argument("--nodes", type=int, default=30, help="number of nodes S (default 30)")
    parser.add_argument("--n", type=int, default=3, dest="n_val", help="replicas per key N (default 3)")
    parser.add_argument(
        "--tokens",
        type=int,
        nargs="+",
        default=[8],
        help="tokens per node T for strategies 1 and 2; several values sweep the budget (default 8)",
    )
    parser.add_argument("--keys", type=int, default=100_000, help="distinct keys (default 100000)")
    parser.add_argument("--requests", type=int, default=1_000_000, help="requests per stream (default 1000000)")
    parser.add_argument("--trials", type=int, default=10, help="independent trials averaged (default 10)")
    parser.add_argument("--seed", type=int, default=1, help="seed of every random choice (default 1)")
    parser.add_argument("--load", choices=LOADS, default="replicas", help="load model (default replicas)")
    parser.add_argument("--theta", type=float, default=THETA_DEFAULT, help="zipfian skew (default 0.99)")
    parser.add_argument("--ring-size", type=int, default=None, help="Q for strategies 2 and 3 (default: nearest S*T)")
    parser.add_argument("--strategy2-ring-size", type=int, default=None, help="Q for strategy 2 only (default: as 3)")
    args = parser.parse_args(argv)
    # The bounds `dynastore bench partitioning` checked before it handed its options over to this parser.
    if not 1 <= args.nodes <= 1000:
        parser.error("--nodes must be from 1 to 1000")
    if not 1 <= args.n_val <= 10:
        parser.error("--n must be from 1 to 10")
    results: list[Result] = []
    try:
        for tokens_per_node in args.tokens:
            results += run(
                nodes=args.nodes,
                n_val=args.n_val,
                tokens_per_node=tokens_per_node,
                keys=args.keys,
                requests=args.requests,
                trials=args.trials,
                seed=args.seed,
                load=args.load,
                ring_size=args.ring_size,
                strategy2_ring_size=args.strategy2_ring_size,
                theta=args.theta,
            )
    except ValueError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    print(format_table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
