"""Checkers over operation histories, shared by the simulator and the real-process fault suite.

A history records every client operation as invoked, then completed as ok, fail (certainly not
applied) or unknown (may or may not have been applied: timeouts and most failures of writes).

- The *set* checker (after Jepsen's): clients add unique elements to a few sets by read-modify-write,
  merging siblings. After healing, every set is read once. Lost = acknowledged but absent; unexpected =
  present but never attempted; unknown adds may be either way.
- The *register* checker: clients write unique values to independent keys, each with the context of
  an earlier read of that key. An acknowledged write must be among the final siblings, unless the
  context given with some other attempted write (acknowledged or unknown) covered it: only a write
  that saw it may replace it. Some writes are deletes (of keys written once, then deleted with the
  context of a read, and never written again). A final sibling is unexpected when no write attempted
  its value, and also when an acknowledged delete's context covered it: the delete superseded it on
  W replicas, so nothing but a resurrection (a reaped tombstone outrun by an older copy) brings it back.
- The *data-type* checker (counters and sets of core/crdt.py): clients increment a few counters by
  positive amounts, add unique elements to a few sets and remove some of them with the context of a
  read that showed them. A counter must end within [the sum of acknowledged increments, that sum
  plus every unknown one]; an acknowledged add not followed by an attempted remove must be present,
  an element whose remove was acknowledged must be absent, and nothing never added may appear.
- The *index* checker (secondary indexes): clients write objects each with index entries (a term of
  its own, and terms shared by many objects, so that range queries span many keys), each key written
  once, and query the index, following continuations page by page. Every answer, whenever it ran,
  may hold only keys some attempted write gave an entry in the query's range, and each key at most
  once (every object has one entry per field here). Some objects are deleted, with the context of
  a read that showed the write. A final query, run after healing and convergence, must also have
  succeeded and hold every acknowledged write in its range that no delete was attempted of: lost =
  acknowledged but absent, as for sets; and it must hold no object whose delete was acknowledged (a
  tombstone indexes nothing, so such a key is a stale entry or a resurrection).
- The *copies* checker looks at what the nodes store rather than at what a read returns, so a loss
  shows before any read could hide or repair it. Every acknowledged write must be covered by the clock
  of the copies (data or hints) on at least W nodes. And a clock may cover a write only if the copy
  still holds what the write wrote: for a set, every element the write stored is among the copy's
  live values (later writes only ever add to what they read); for a register, the write is still a
  live sibling, or some attempted write's context covered it. A clock that claims a version its copy
  lost is exactly how a version vector drops an acknowledged write on the next merge. A register
  write that an attempted delete covered may be held by no node at all: its tombstone may be reaped.

A bucket keeping one value per key (last-write-wins, or allow_mult off) drops, by design, every write
that loses to a concurrent newer one (core/objects.py), so the set checker finds lost elements there,
and the register checker judges them with `one_value`: a register ends with exactly one value, one
that was attempted, once any write to it was acknowledged. The copies checker does not apply: a copy
need not hold a write that lost, and pruning may drop the clock entry of one (which is harmless there:
should it come back from a stale copy, it loses again).

Pure: histories in, verdicts out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from dynastore.core.objects import Object
from dynastore.core.versions import Context, Dot

OK, FAIL, UNKNOWN = "ok", "fail", "unknown"


@dataclass
class SetOp:
    set_key: str
    element: int
    outcome: str = UNKNOWN
    # Known once acknowledged: the write's dot and every element it stored (what it read, plus its own).
    dot: Dot | None = None
    stored: frozenset[int] = frozenset()


@dataclass
class SetVerdict:
    attempted: int
    acknowledged: int
    unknown: int
    failed: int
    lost: list[int] = field(default_factory=list)
    unexpected: list[int] = field(default_factory=list)
    recovered_unknown: int = 0

    @property
    def ok(self) -> bool:
        return not self.lost and not self.unexpected


def check_sets(ops: Iterable[SetOp], final: dict[str, set[int]]) -> SetVerdict:
    ops = list(ops)
    attempted = {(op.set_key, op.element) for op in ops}
    acked = {(op.set_key, op.element) for op in ops if op.outcome == OK}
    unknown = {(op.set_key, op.element) for op in ops if op.outcome == UNKNOWN}
    present = {(key, element) for key, elements in final.items() for element in elements}
    verdict = SetVerdict(
        attempted=len(attempted),
        acknowledged=len(acked),
        unknown=len(unknown),
        failed=sum(1 for op in ops if op.outcome == FAIL),
    )
    verdict.lost = sorted(element for key, element in acked - present)
    verdict.unexpected = sorted(element for key, element in present - attempted)
    verdict.recovered_unknown = len(unknown & present)
    return verdict


@dataclass
class RegisterWrite:
    key: str
    value: bytes
    given: Context
    outcome: str = UNKNOWN
    dot: Dot | None = None  # known once acknowledged (the context a write returns names its dot)
    # A delete: `value` is empty and the write leaves a tombstone (which may later be reaped).
    delete: bool = False


@dataclass
class RegisterVerdict:
    acknowledged: int
    unknown: int
    lost: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.lost and not self.unexpected


def check_registers(
    writes: Iterable[RegisterWrite], final: dict[str, list[tuple[Dot, bytes]]], *, one_value: bool = False
) -> RegisterVerdict:
    writes = list(writes)
    verdict = RegisterVerdict(
        acknowledged=sum(1 for w in writes if w.outcome == OK),
        unknown=sum(1 for w in writes if w.outcome == UNKNOWN),
    )
    attempted_values = {(w.key, w.value) for w in writes if not w.delete}
    deletes = [w for w in writes if w.delete and w.outcome == OK]
    for key, siblings in final.items():
        for dot, value in siblings:
            if (key, value) not in attempted_values:
                verdict.unexpected.append(f"{key}={value!r}")
            elif any(d.key == key and d.given.covers(dot) for d in deletes):
                verdict.unexpected.append(f"{key}={value!r} (deleted, then back)")
        if one_value and len(siblings) > 1:
            verdict.unexpected.append(f"{key} holds {len(siblings)} values")
    if one_value:
        # Any acknowledged write may have lost to a concurrent newer one (or been deleted), but not all
        # of them to nothing.
        deleted = {w.key for w in writes if w.delete and w.outcome != FAIL}
        acked = sorted({w.key for w in writes if w.outcome == OK and not w.delete and w.key not in deleted})
        verdict.lost = [f"{key}: every value" for key in acked if not final.get(key)]
        return verdict
    for w in writes:
        if w.outcome != OK or w.dot is None or w.delete:
            continue
        survivors = {dot for dot, _ in final.get(w.key, [])}
        if w.dot in survivors:
            continue
        replaced = any(
            other is not w and other.key == w.key and other.outcome != FAIL and other.given.covers(w.dot)
            for other in writes
        )
        if not replaced:
            verdict.lost.append(f"{w.key}={w.value!r}")
    return verdict


@dataclass
class CounterOp:
    key: str
    amount: int
    outcome: str = UNKNOWN


@dataclass
class ElementOp:
    """An add (or, with `remove`, a remove with the context of a read that showed it) of one element."""

    key: str
    element: str
    remove: bool = False
    outcome: str = UNKNOWN


@dataclass
class DataTypeVerdict:
    counters: int
    elements: int
    lost: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.lost and not self.unexpected


def check_datatypes(
    counter_ops: Iterable[CounterOp],
    element_ops: Iterable[ElementOp],
    final_counters: Mapping[str, int],
    final_sets: Mapping[str, set[str]],
) -> DataTypeVerdict:
    counter_ops = list(counter_ops)
    element_ops = list(element_ops)
    verdict = DataTypeVerdict(len(counter_ops), len(element_ops))
    for key, value in final_counters.items():
        low = sum(op.amount for op in counter_ops if op.key == key and op.outcome == OK)
        high = low + sum(op.amount for op in counter_ops if op.key == key and op.outcome == UNKNOWN)
        if value < low:
            verdict.lost.append(f"counter {key} is {value}, below the {low} acknowledged")
        elif value > high:
            verdict.unexpected.append(f"counter {key} is {value}, above the {high} acknowledged or unknown")
    adds = {(op.key, op.element): op for op in element_ops if not op.remove}
    removes: dict[tuple[str, str], list[ElementOp]] = {}
    for op in element_ops:
        if op.remove:
            removes.setdefault((op.key, op.element), []).append(op)
    present = {(key, element) for key, elements in final_sets.items() for element in elements}
    for where, add in adds.items():
        tried = [op for op in removes.get(where, []) if op.outcome != FAIL]
        if any(op.outcome == OK for op in tried):
            if where in present:
                verdict.unexpected.append(f"set {where[0]}: {where[1]} (removed, then back)")
        elif add.outcome == OK and not tried and where not in present:
            verdict.lost.append(f"set {where[0]}: {where[1]}")
    for where in present - set(adds):
        verdict.unexpected.append(f"set {where[0]}: {where[1]} (never added)")
    return verdict


Term = str | int


@dataclass
class IndexWrite:
    """A write of a new key with index entries (field, term): `_int` terms as ints, `_bin` as text.
    `deleted`: how a delete of the key with a context covering this write ended (None: not tried)."""

    key: str
    entries: tuple[tuple[str, Term], ...]
    outcome: str = UNKNOWN
    deleted: str | None = None


@dataclass
class IndexQuery:
    """A query of index `index` over [low, high] and the keys every page it got gave, in order. ok: every page
    came (the last without a continuation); fail: one did not (`keys` holds the pages before). `final`:
    run after healing and convergence, so it must be ok and complete."""

    index: str
    low: Term
    high: Term
    keys: list[str] = field(default_factory=list)
    outcome: str = UNKNOWN
    final: bool = False
    where: str = ""  # which node coordinated it, for the report


@dataclass
class IndexVerdict:
    writes: int
    acknowledged: int
    queries: int
    queries_ok: int
    lost: list[str] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    failed_final: list[str] = field(default_factory=list)
    deleted: int = 0

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.unexpected or self.failed_final)


def check_indexes(writes: Iterable[IndexWrite], queries: Iterable[IndexQuery]) -> IndexVerdict:
    writes = list(writes)
    queries = list(queries)
    verdict = IndexVerdict(
        writes=len(writes),
        acknowledged=sum(1 for w in writes if w.outcome == OK),
        queries=len(queries),
        queries_ok=sum(1 for q in queries if q.outcome == OK),
        deleted=sum(1 for w in writes if w.deleted == OK),
    )
    for query in queries:
        what = f"{query.index} [{query.low!r}, {query.high!r}]" + (f" at {query.where}" if query.where else "")
        attempted = {w.key for w in writes if _matches(w, query)}
        seen: set[str] = set()
        for key in query.keys:
            if key in seen:
                verdict.duplicated.append(f"{key} twice in {what}")
            elif key not in attempted:
                verdict.unexpected.append(f"{key} in {what}, which no write gave such a term")
            seen.add(key)
        if not query.final:
            continue
        if query.outcome != OK:
            verdict.failed_final.append(what)
            continue
        for w in writes:
            if not _matches(w, query):
                continue
            if w.deleted == OK and w.key in seen:
                verdict.unexpected.append(f"{w.key} in {what} after its delete was acknowledged")
            elif w.outcome == OK and w.deleted in (None, FAIL) and w.key not in seen:
                verdict.lost.append(f"{w.key} not in {what}")
    return verdict


def _matches(write: IndexWrite, query: IndexQuery) -> bool:
    """Whether some entry of `write` lies in `query`'s range (integers compared as numbers)."""
    low, high = query.low, query.high
    for name, term in write.entries:
        if name != query.index:
            continue
        if isinstance(term, int) and isinstance(low, int) and isinstance(high, int) and low <= term <= high:
            return True
        if isinstance(term, str) and isinstance(low, str) and isinstance(high, str) and low <= term <= high:
            return True
    return False


# One node's copies of each key (its data and any hints it holds), as decoded objects.
Copies = Mapping[str, Mapping[str, list[Object]]]


def check_copies(
    set_ops: Iterable[SetOp],
    writes: Iterable[RegisterWrite],
    copies: Copies,
    w: int,
    elements_of: Callable[[bytes], Iterable[int]],
) -> list[str]:
    """Problems with what the nodes hold (`copies[node][key]`), for acknowledged writes whose dot is known.

    `elements_of` turns a stored set value back into its elements.
    """
    set_ops = list(set_ops)
    writes = list(writes)
    problems: list[str] = []
    for op in set_ops:
        if op.outcome != OK or op.dot is None:
            continue
        holders = 0
        for node, by_key in copies.items():
            covering = [obj for obj in by_key.get(op.set_key, []) if obj.clock.covers(op.dot)]
            holders += bool(covering)
            for obj in covering:
                present: set[int] = set()
                for _, content in obj.siblings:
                    if not content.deleted:
                        present.update(elements_of(content.value))
                missing = op.stored - present
                if missing:
                    problems.append(
                        f"{node}'s copy of {op.set_key} covers the write of element {op.element} but lacks "
                        f"{len(missing)} of the elements it stored (e.g. {min(missing)})"
                    )
        if holders < w:
            problems.append(f"the write of element {op.element} to {op.set_key} is held by {holders} nodes (w={w})")
    for rw in writes:
        if rw.outcome != OK or rw.dot is None or rw.delete:
            continue
        replacing = [
            other
            for other in writes
            if other is not rw and other.key == rw.key and other.outcome != FAIL and other.given.covers(rw.dot)
        ]
        replaced = bool(replacing)
        reapable = any(other.delete for other in replacing)
        holders = 0
        for node, by_key in copies.items():
            covering = [obj for obj in by_key.get(rw.key, []) if obj.clock.covers(rw.dot)]
            holders += bool(covering)
            for obj in covering:
                if not replaced and rw.dot not in obj.dots():
                    problems.append(f"{node}'s copy of {rw.key} covers {rw.value!r} but no longer holds it")
        if holders < w and not reapable:
            problems.append(f"the write of {rw.value!r} to {rw.key} is held by {holders} nodes (w={w})")
    return problems
