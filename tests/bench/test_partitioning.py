"""The partitioning experiment: its three strategies, their metadata budgets, and what it measures."""

from __future__ import annotations

import random

import pytest

from dynastore.bench.partitioning import (
    EqualPartitions,
    PlacementStrategy,
    RandomTokens,
    RandomTokensEqualPartitions,
    Result,
    TokenRing,
    main,
    node_names,
    partition_ends,
    ring_size_for,
    run,
    space_loads,
)
from dynastore.bench.zipf import ZipfianGenerator
from dynastore.core.hashing import RING_TOP, key_position, partition_of


def _strategies(nodes: int, tokens_per_node: int, seed: int) -> list[PlacementStrategy]:
    names = node_names(nodes)
    ring_size = ring_size_for(nodes, tokens_per_node)
    tokens = TokenRing.draw(names, tokens_per_node, random.Random(seed))
    return [
        RandomTokens(tokens),
        RandomTokensEqualPartitions(tokens, ring_size),
        EqualPartitions.claim(names, ring_size, 3),
    ]


def _positions(count: int) -> list[int]:
    return [key_position(b"test", f"key-{item}".encode()) for item in range(count)]


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_every_strategy_places_every_key_on_n_distinct_nodes(n: int) -> None:
    """Each strategy gives every key N different members: a replica never lands twice on one node."""
    names = set(node_names(10))
    for strategy in _strategies(10, 4, seed=5):
        for position in _positions(2_000):
            placed = strategy.preference_list(position, n)
            assert len(placed) == n, (strategy.name, placed)
            assert len(set(placed)) == n, (strategy.name, placed)
            assert set(placed) <= names


def test_a_key_belongs_to_the_first_token_at_or_after_it() -> None:
    """Strategy 1 partitions by token value: a token owns the range that ends at it, wrapping at the top."""
    tokens = TokenRing((100, 200, 300), ("a", "b", "c"))
    strategy = RandomTokens(tokens)
    assert strategy.preference_list(100, 1) == ("a",)
    assert strategy.preference_list(101, 3) == ("b", "c", "a")
    assert strategy.preference_list(300, 2) == ("c", "a")
    assert strategy.preference_list(RING_TOP - 1, 1) == ("a",)


def test_a_partition_is_placed_by_its_end_not_by_the_key() -> None:
    """Strategy 2 decouples partitioning from placement: all keys of a partition share one list."""
    tokens = TokenRing.draw(node_names(8), 4, random.Random(11))
    strategy = RandomTokensEqualPartitions(tokens, 64)
    ends = partition_ends(64)
    for position in _positions(2_000):
        end = ends[partition_of(position, 64)]
        assert strategy.preference_list(position, 3) == tokens.walk(end, 3)


def test_strategy_three_places_keys_exactly_as_the_products_ring_does() -> None:
    """Strategy 3 is dynastore's own ring, not a model of it: same partition, same replicas."""
    strategy = EqualPartitions.claim(node_names(30), 256, 3)
    for item in range(2_000):
        key = f"key-{item}".encode()
        expected = strategy.ring.replicas(strategy.ring.partition_of(b"test", key), 3)
        assert strategy.preference_list(key_position(b"test", key), 3) == expected


def test_metadata_budgets_are_equal_when_nodes_times_tokens_is_a_power_of_two() -> None:
    """The three strategies are compared at one size of membership metadata, as in the paper."""
    entries = {strategy.metadata_entries() for strategy in _strategies(32, 8, seed=2)}
    assert entries == {256}


@pytest.mark.parametrize("nodes", [3, 7, 20, 30, 32, 50, 100])
@pytest.mark.parametrize("tokens_per_node", [1, 2, 3, 8, 100])
def test_the_ring_size_is_the_power_of_two_nearest_the_token_budget(nodes: int, tokens_per_node: int) -> None:
    """When S*T is no power of two, strategy 3's budget is off by at most sqrt(2), unless S needs more."""
    budget = nodes * tokens_per_node
    ring_size = ring_size_for(nodes, tokens_per_node)
    assert ring_size & (ring_size - 1) == 0
    assert ring_size >= nodes
    within = budget / 2**0.5 <= ring_size <= budget * 2**0.5
    smallest_that_fits_every_node = ring_size // 2 < nodes
    assert within or smallest_that_fits_every_node, (budget, ring_size)


def test_every_position_is_served_by_n_nodes() -> None:
    """Space shares add up to N times the ring, so no range of the hash space is dropped or doubled."""
    names = node_names(10)
    for strategy in _strategies(10, 4, seed=9):
        assert sum(space_loads(strategy, 3, names, "replicas")) == 3 * RING_TOP
        assert sum(space_loads(strategy, 3, names, "coordinator")) == RING_TOP


def test_a_seed_reproduces_a_run_exactly() -> None:
    """Every random choice comes from the seed: the same seed gives the same table, another does not."""

    def small_run(seed: int) -> list[Result]:
        return run(nodes=12, tokens_per_node=4, keys=2_000, requests=10_000, trials=2, seed=seed)

    assert small_run(4) == small_run(4)
    assert small_run(4) != small_run(5)


def test_the_zipfian_stream_asks_for_the_hottest_item_as_often_as_zipf_says() -> None:
    """The request stream has the skew it claims: rank 0 is drawn with probability 1 / zeta(n)."""
    generator = ZipfianGenerator.create(10_000)
    ranks = generator.sample(random.Random(1), 200_000)
    assert all(0 <= rank < 10_000 for rank in ranks)
    share = ranks.count(0) / len(ranks)
    assert share == pytest.approx(generator.probability(0), rel=0.05)


def test_equal_partitions_balance_a_uniform_stream_better_than_random_tokens() -> None:
    """The paper's finding that holds robustly: strategy 3 beats strategies 1 and 2 at equal metadata."""
    first, second, third = run(nodes=30, n_val=3, tokens_per_node=8, keys=20_000, requests=200_000, trials=2, seed=1)
    assert third.uniform.efficiency > first.uniform.efficiency + 0.05
    assert third.uniform.efficiency > second.uniform.efficiency + 0.05
    assert third.space.efficiency > max(first.space.efficiency, second.space.efficiency)
    assert third.uniform.in_balance > max(first.uniform.in_balance, second.uniform.in_balance)


def test_the_command_prints_one_row_per_strategy(capsys: pytest.CaptureFixture[str]) -> None:
    """`python -m dynastore.bench.partitioning` runs the experiment and prints its table."""
    status = main(["--nodes", "8", "--tokens", "2", "--keys", "500", "--requests", "2000", "--trials", "1"])
    assert status == 0
    table = capsys.readouterr().out
    for strategy in ("1: T random tokens", "2: T tokens + Q partitions", "3: Q/S partitions/node"):
        assert table.count(strategy) == 1, table


def test_the_command_refuses_more_replicas_than_nodes(capsys: pytest.CaptureFixture[str]) -> None:
    """A replica count the cluster cannot hold is reported as a usage error, not a crash."""
    assert main(["--nodes", "2", "--n", "3", "--trials", "1"]) == 2
    assert "N must be" in capsys.readouterr().err
