"""Causality: dots, version vectors, client contexts and the dotted-version-vector-set algebra.

Theory of operation
-------------------
Every write gets a *dot* `(actor, counter)` from the node that coordinates it. An actor is a node
name plus an epoch drawn when the node's data directory was created, so a node that lost its disk can
never hand out a dot it handed out before. Counters come from one node-wide sequence that is never
reused (it is leased in blocks and the block end is persisted), not from a per-key sequence: a key that
was deleted, reaped and written again still gets fresh dots, so a forgotten tombstone on a stale
replica can never swallow the new write.

A replica's state for a key is a `Versioned`: a version vector `clock` summarising every dot the
replica has seen for that key (live or overwritten), and the *siblings*: the values still live, each
with its own dot. Because a dot is kept with each value rather than folded into the vector, two clients
that keep writing with stale contexts produce at most one sibling each: a write removes exactly the
siblings its context covers, and adds one (the sibling explosion of per-node vector clocks cannot
happen).

Rules (all pure):
- a context *covers* a dot if the dot's counter is at most the context vector's entry for its actor,
  or the dot is one of the context's extra dots;
- update(state, context, dot, value): drop the siblings the context covers, add (dot, value); the new
  clock is the join of the state clock, the context vector and the dot;
- merge(a, b): keep a sibling present in both, or present in one and not covered by the other's
  clock; the clock is the pointwise maximum. Merge is commutative, associative and idempotent;
- a descends b when a's clock is pointwise at least b's.

A context handed to a client after a read is the state's clock: it covers everything the client was
shown. After a write that did not return the body, it is the write's own causal past (the client's
context plus the new dot, as an extra dot), so a client that writes again with it replaces only what it
has actually seen, never a sibling written concurrently by somebody else.

Pruning drops the oldest clock entries (by the timestamp of their last update) beyond a threshold,
but never an entry whose actor has a live sibling. Pruning may only ever create a spurious sibling,
never lose a write. It is applied by coordinators, never inside merge (merge must stay a lattice join).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, Self, TypeVar

ACTOR_BYTES_MAX = 255
COUNTER_MAX = (1 << 63) - 1


class _Ordered(Protocol):
    def __lt__(self, other: Self, /) -> bool: ...


T = TypeVar("T", bound=_Ordered)


@dataclass(frozen=True, slots=True, order=True)
class Dot:
    """One event: the `counter`-th dot handed out by `actor`."""

    actor: bytes
    counter: int

    def __post_init__(self) -> None:
        assert 0 < len(self.actor) <= ACTOR_BYTES_MAX, self.actor
        assert 0 < self.counter <= COUNTER_MAX, self.counter


@dataclass(frozen=True, slots=True)
class Clock:
    """A version vector: actor -> (counter, timestamp of that entry's last advance, in ms).

    Entries are kept sorted by actor so that equal clocks are equal values.
    """

    entries: tuple[tuple[bytes, int, int], ...] = ()

    @classmethod
    def from_mapping(cls, counters: Mapping[bytes, tuple[int, int]]) -> Clock:
        return cls(tuple(sorted((a, c, ts) for a, (c, ts) in counters.items() if c > 0)))

    def as_dict(self) -> dict[bytes, tuple[int, int]]:
        return {actor: (counter, ts) for actor, counter, ts in self.entries}

    def counters(self) -> dict[bytes, int]:
        return {actor: counter for actor, counter, _ in self.entries}

    def get(self, actor: bytes) -> int:
        for a, counter, _ in self.entries:
            if a == actor:
                return counter
        return 0

    def covers(self, dot: Dot) -> bool:
        return dot.counter <= self.get(dot.actor)

    def merge(self, other: Clock) -> Clock:
        merged = self.as_dict()
        for actor, counter, ts in other.entries:
            mine = merged.get(actor)
            if mine is None or (counter, ts) > mine:
                merged[actor] = (counter, ts)
        return Clock.from_mapping(merged)

    def advance(self, dot: Dot, now_ms: int) -> Clock:
        merged = self.as_dict()
        counter, _ = merged.get(dot.actor, (0, 0))
        merged[dot.actor] = (max(counter, dot.counter), now_ms)
        return Clock.from_mapping(merged)

    def with_counters(self, counters: Mapping[bytes, int], now_ms: int) -> Clock:
        """This clock joined with a timestamp-less vector (a client context)."""
        merged = self.as_dict()
        for actor, counter in counters.items():
            mine = merged.get(actor)
            if mine is None or counter > mine[0]:
                merged[actor] = (counter, now_ms)
        return Clock.from_mapping(merged)

    def descends(self, other: Clock) -> bool:
        mine = self.counters()
        return all(mine.get(actor, 0) >= counter for actor, counter, _ in other.entries)

    def same_counters(self, other: Clock) -> bool:
        return self.counters() == other.counters()


def descends(a: Clock, b: Clock) -> bool:
    """True when `a` has seen everything `b` has."""
    return a.descends(b)


def concurrent(a: Clock, b: Clock) -> bool:
    return not a.descends(b) and not b.descends(a)


@dataclass(frozen=True, slots=True)
class Context:
    """What a client holds between a read and a write: a vector plus a few extra dots.

    `coordinator` names the node that answered the read fastest; a write carrying this context is
    coordinated there when possible (the Dynamo paper's read-your-writes and latency optimisation).
    """

    vector: tuple[tuple[bytes, int], ...] = ()
    dots: frozenset[Dot] = frozenset()
    coordinator: str | None = None

    @classmethod
    def of(cls, clock: Clock, coordinator: str | None = None) -> Context:
        return cls(tuple((a, c) for a, c, _ in clock.entries), frozenset(), coordinator)

    @property
    def empty(self) -> bool:
        return not self.vector and not self.dots

    def counters(self) -> dict[bytes, int]:
        return dict(self.vector)

    def covers(self, dot: Dot) -> bool:
        if dot in self.dots:
            return True
        return any(actor == dot.actor and dot.counter <= counter for actor, counter in self.vector)

    def after_write(self, dot: Dot) -> Context:
        """The causal past of a value written with this context: the vector and the new dot.

        Older extra dots are dropped: whatever they covered was removed by the write that just
        happened, so every state that holds the new dot has already let them go.
        """
        return Context(self.vector, frozenset({dot}), self.coordinator)

    def join(self, other: Context) -> Context:
        merged = dict(self.vector)
        for actor, counter in other.vector:
            merged[actor] = max(merged.get(actor, 0), counter)
        dots = frozenset(d for d in self.dots | other.dots if d.counter > merged.get(d.actor, 0))
        return Context(tuple(sorted(merged.items())), dots, self.coordinator or other.coordinator)


@dataclass(frozen=True, slots=True)
class Versioned(Generic[T]):
    """A replica's state for one key: the clock and the live values with their dots, sorted by dot."""

    clock: Clock
    siblings: tuple[tuple[Dot, T], ...]

    def dots(self) -> list[Dot]:
        return [dot for dot, _ in self.siblings]

    def values(self) -> list[T]:
        return [value for _, value in self.siblings]

    def context(self, coordinator: str | None = None) -> Context:
        return Context.of(self.clock, coordinator)

    def check(self) -> None:
        """Assert the invariants every state must hold (used by tests and on decode)."""
        dots = self.dots()
        assert dots == sorted(set(dots)), "siblings must be sorted by dot, one per dot"
        for dot in dots:
            assert self.clock.covers(dot), f"clock does not cover live dot {dot}"


def empty() -> Versioned[T]:
    return Versioned(Clock(), ())


def _sorted(siblings: Iterable[tuple[Dot, T]]) -> tuple[tuple[Dot, T], ...]:
    return tuple(sorted(siblings, key=lambda pair: pair[0]))


def update(state: Versioned[T] | None, context: Context, dot: Dot, value: T, now_ms: int) -> Versioned[T]:
    """A coordinator's new state after a client writes `value` with `context`; `dot` is the write's dot."""
    current: Versioned[T] = state if state is not None else empty()
    assert not current.clock.covers(dot), f"dot {dot} was already used for this key"
    kept = [(d, v) for d, v in current.siblings if not context.covers(d)]
    kept.append((dot, value))
    clock = current.clock.with_counters(context.counters(), now_ms).advance(dot, now_ms)
    return Versioned(clock, _sorted(kept))


def merge(a: Versioned[T], b: Versioned[T]) -> Versioned[T]:
    """The join of two replica states (commutative, associative, idempotent)."""
    if a is b:
        # Idempotent, and common: replicas that agree send the same bytes, which decode (cached) to
        # the very same object.
        return a
    in_a = dict(a.siblings)
    in_b = dict(b.siblings)
    kept: dict[Dot, T] = {}
    for dot, value in in_a.items():
        other = in_b.get(dot)
        if other is not None:
            # One dot names one write, so the values agree; if a peer ever sent a different value
            # under the same dot, pick deterministically so every replica still converges.
            kept[dot] = value if not (value < other) else other
        elif not b.clock.covers(dot):
            kept[dot] = value
    for dot, value in in_b.items():
        if dot not in in_a and not a.clock.covers(dot):
            kept[dot] = value
    return Versioned(a.clock.merge(b.clock), _sorted(kept.items()))


def merge_all(states: Iterable[Versioned[T]]) -> Versioned[T]:
    result: Versioned[T] = empty()
    for state in states:
        result = merge(result, state)
    return result


def discard_older(state: Versioned[T], context: Context) -> Versioned[T]:
    """Drop the siblings a context covers, keeping the clock (used by last-write-wins and resolvers)."""
    return Versioned(state.clock, tuple((d, v) for d, v in state.siblings if not context.covers(d)))


def keep_only(state: Versioned[T], choose: Callable[[list[tuple[Dot, T]]], tuple[Dot, T]]) -> Versioned[T]:
    """Keep one sibling, picked by `choose` (buckets keeping one value, objects.py), with the whole clock."""
    if len(state.siblings) <= 1:
        return state
    return Versioned(state.clock, (choose(list(state.siblings)),))


def prune(state: Versioned[T], entries_max: int) -> Versioned[T]:
    """Drop the oldest clock entries beyond `entries_max`, never one whose actor has a live sibling."""
    if len(state.clock.entries) <= entries_max:
        return state
    live = {dot.actor for dot, _ in state.siblings}
    droppable = sorted(
        ((ts, actor) for actor, _, ts in state.clock.entries if actor not in live),
    )
    excess = len(state.clock.entries) - entries_max
    drop = {actor for _, actor in droppable[:excess]}
    kept = tuple(entry for entry in state.clock.entries if entry[0] not in drop)
    return Versioned(Clock(kept), state.siblings)
