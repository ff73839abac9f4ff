"""Quorum arithmetic and the tallies of get and put coordination, as pure values.

A coordinator sends a request to the first N healthy nodes of a preference list and feeds each
reply into a tally. The tally says whether the request can already be answered (`ok`), can no longer
succeed (`fail`), or must wait; and, once every reply is in, what read repair to do. It never sends
anything itself (the node core does), which keeps the arithmetic testable on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dynastore.core import objects
from dynastore.core.messages import QUORUM_WORDS, Quorum
from dynastore.core.objects import Object
from dynastore.core.ring import Target
from dynastore.core.versions import merge

# What a tally says of a request: answer it, it can no longer succeed, or wait for more replies.
Decision = Literal["wait", "ok", "fail"]
WAIT: Decision = "wait"
OK: Decision = "ok"
FAIL: Decision = "fail"
# Quorum integers a client may give (any count above n_val is refused anyway).
QUORUM_VALUE_LIMIT = 100_000


class QuorumError(ValueError):
    """A quorum value given by a client is not acceptable (the message fits an HTTP 400)."""


def parse(name: str, raw: object) -> int | str:
    """A quorum value as a client or a bucket property gives it: an integer, or one of QUORUM_WORDS.

    Digits are ASCII only (`²` passes str.isdigit() but not int()), and a bucket property is stored as
    given, so it must already be sane.
    """
    if isinstance(raw, int) and not isinstance(raw, bool) and 0 <= raw < QUORUM_VALUE_LIMIT:
        return raw
    if isinstance(raw, str):
        value = raw.strip().lower()
        if value in QUORUM_WORDS:
            return value
        if 0 < len(value) < 6 and all("0" <= ch <= "9" for ch in value):
            return int(value)
    raise QuorumError(f"{name} must be an integer or one of {', '.join(QUORUM_WORDS)}; got {raw!r}")


def resolve(name: str, spec: object, n_val: int, default: int | str, minimum: int) -> int:
    """Turn a quorum value (an integer, or one/quorum/all/default) into a count for this n_val."""
    value = parse(name, default if spec is None or spec == "default" else spec)
    count = _count(value, n_val)
    if count < minimum or count > n_val:
        raise QuorumError(f"{name}={count} is invalid for a bucket with n_val={n_val}")
    return count


def delete_quorums(
    r: Quorum | None, w: Quorum | None, rw: Quorum | None, bucket_rw: Quorum
) -> tuple[Quorum | None, Quorum | None]:
    """The r of a delete's read and the w of its tombstone's write, chosen as Riak's riak_kv_delete
    chooses them from a client's parameters (None where not given) and the bucket's `rw`.

    `rw` is Riak's single quorum for both halves: the `rw` parameter, else (also for `rw=default`) the
    bucket's. A given w replaces it for the write, and a given r or w for the read (whose r, when only
    w is given, is then the bucket's r). None leaves a quorum to the bucket's own prop.
    """
    both = bucket_rw if rw is None or rw == "default" else rw
    read = r if r is not None or w is not None else both
    write = w if w is not None else both
    return read, write


def _count(value: int | str, n_val: int) -> int:
    if isinstance(value, int):
        return value
    if value == "one":
        return 1
    if value == "quorum":
        return n_val // 2 + 1
    if value == "all":
        return n_val
    # "default" names the bucket's own value, which is never "default" itself.
    raise QuorumError(f"default is not a quorum of its own for a bucket with n_val={n_val}")


@dataclass
class GetTally:
    """Replies to a read: R replies, at least one of which found the key, or every reply if none did."""

    targets: tuple[Target, ...]
    r: int
    pr: int
    # The bucket keeps one value per key: merged() resolves to it (objects.py, "One value per key").
    resolve_one: bool = False
    results: dict[str, Object | None] = field(default_factory=dict)
    errors: set[str] = field(default_factory=set)
    # The first primary to answer: a write following this read is best coordinated there.
    fastest: str | None = None
    # merged() of the first so many results (results only grow): answering and read repair share it.
    _merged: tuple[int, Object | None] | None = field(default=None, init=False, repr=False, compare=False)

    def add(self, node: str, obj: Object | None) -> None:
        if node in self.results or node in self.errors or not self._is_target(node):
            return
        self.results[node] = obj
        if self.fastest is None and self._primary(node):
            self.fastest = node

    def add_error(self, node: str) -> None:
        if node not in self.results and self._is_target(node):
            self.errors.add(node)

    def decision(self) -> Decision:
        primaries = sum(1 for node in self.results if self._primary(node))
        if len(self.results) >= self.r and primaries >= self.pr:
            # R replies that all say "not found" are not enough while a replica that may hold the
            # key is still to answer (one that missed a write, or a new owner mid-transfer, must not
            # hide the value): answer not-found only once every target has spoken.
            if any(obj is not None for obj in self.results.values()) or self.complete:
                return OK
            return WAIT
        outstanding = len(self.targets) - len(self.results) - len(self.errors)
        outstanding_primaries = sum(
            1 for t in self.targets if t.primary and t.node not in self.results and t.node not in self.errors
        )
        if len(self.results) + outstanding < self.r or primaries + outstanding_primaries < self.pr:
            return FAIL
        return WAIT

    @property
    def complete(self) -> bool:
        return len(self.results) + len(self.errors) >= len(self.targets)

    def merged(self) -> Object | None:
        cached = self._merged
        if cached is not None and cached[0] == len(self.results):
            return cached[1]
        found = [obj for obj in self.results.values() if obj is not None]
        result: Object | None = None
        if found:
            result = found[0]
            for obj in found[1:]:
                result = merge(result, obj)
            if self.resolve_one:
                result = objects.resolve(result)
        self._merged = (len(self.results), result)
        return result

    def repairs(self) -> list[Target]:
        """Primaries whose reply is missing something the merged object has (read repair)."""
        merged = self.merged()
        if merged is None:
            return []
        stale: list[Target] = []
        for t in self.targets:
            if not t.primary or t.node not in self.results:
                continue
            obj = self.results[t.node]
            if obj is None or (obj is not merged and not _same(obj, merged)):
                stale.append(t)
        return stale

    def _is_target(self, node: str) -> bool:
        return any(t.node == node for t in self.targets)

    def _primary(self, node: str) -> bool:
        return any(t.node == node and t.primary for t in self.targets)


def _same(a: Object, b: Object) -> bool:
    return a.clock.same_counters(b.clock) and a.dots() == b.dots()


@dataclass
class PutTally:
    """Acknowledgements of a write. Each ack says whether its copy is durable (synced before the ack)
    or buffered (written, not yet synced: a buffered write, the Dynamo paper's section 6.1). Every ack
    counts towards W, durable ones towards DW too (Riak's meaning: dw <= w), and acks from primaries
    towards PW. `durable_acks` is a subset of `acks`."""

    targets: tuple[Target, ...]
    w: int
    dw: int
    pw: int
    acks: set[str] = field(default_factory=set)
    errors: set[str] = field(default_factory=set)
    durable_acks: set[str] = field(default_factory=set)

    def ack(self, node: str, durable: bool = True) -> None:
        if node not in self.errors and any(t.node == node for t in self.targets):
            self.acks.add(node)
            if durable:
                self.durable_acks.add(node)

    def add_error(self, node: str) -> None:
        if node not in self.acks and any(t.node == node for t in self.targets):
            self.errors.add(node)

    def decision(self) -> Decision:
        need = max(self.w, self.dw)
        primaries = sum(1 for t in self.targets if t.primary and t.node in self.acks)
        if len(self.acks) >= need and len(self.durable_acks) >= self.dw and primaries >= self.pw:
            return OK
        pending = [t for t in self.targets if t.node not in self.acks and t.node not in self.errors]
        if (
            len(self.acks) + len(pending) < need
            or len(self.durable_acks) + len(pending) < self.dw
            or primaries + sum(1 for t in pending if t.primary) < self.pw
        ):
            return FAIL
        return WAIT

    @property
    def complete(self) -> bool:
        return len(self.acks) + len(self.errors) >= len(self.targets)

    def shortfall(self) -> str:
        primaries = sum(1 for t in self.targets if t.primary and t.node in self.acks)
        return (
            f"{len(self.acks)} of w={max(self.w, self.dw)} replicas acknowledged"
            + (f", {len(self.durable_acks)} of dw={self.dw} durably" if self.dw else "")
            + (f", {primaries} of pw={self.pw} primaries" if self.pw else "")
        )
