"""Convergent data types (state-based CRDTs), as Riak 2 ships them: counters, sets, maps (of counters,
sets, registers, flags and maps) and HyperLogLogs.

Theory of operation
-------------------
A key's state is a lattice value; `merge` is its join (commutative, associative, idempotent), and
every operation is an inflation (the result is at least the input), so replicas that have seen the
same operations hold the same state whatever order they met in. datatypes.py stores a state as the
value of a sibling and joins every sibling a key has.

Every operation is applied by one coordinator under a fresh, globally unique dot `(actor, counter)`
(actors.py: an actor's counters only grow, and its actor changes whenever it may have lost a version
of its own). A state carries ONE clock, a version vector over every dot applied to it, and everything
removable inside it is tagged with dots. One rule decides removal everywhere (observed-remove, the
ORSWOT rule): when two states meet, a thing tagged with a dot that one side has and the other lacks
survives only if the other side's clock does not cover that dot (it has not seen the write that made
it); if it has, it saw it and removed it. Nested values in maps use the same two top-level clocks.

- set: element -> dots. An add gives the element the operation's dot (its older dots are covered by
  the new clock, so replacing them is sound); a remove drops the element.
- counter: a PN-counter whose entries are keyed by (actor, start) and carry the counter of the dot of
  the version that last changed them: an entry is removable like an element (a delete or a field
  remove resets what it observed), and a coordinator extends its own actor's entry when the state
  holds one, else starts one keyed by its dot, so an entry's versions form one chain of growing
  values and are never reused after a reset. An entry is one number: one extended concurrently with
  a delete survives whole, counts the delete saw included (as in Riak, the update wins).
- register (in maps): last-write-wins by its own timestamp. It keeps every version no other has seen
  (observed-remove by the versions' dots, so joins stay associative) and shows the newest by
  (timestamp, value); a write replaces the versions it saw and is dated just past the newest of them,
  so a coordinator whose clock is behind cannot make a value lose to one it saw.
- flag (in maps): enable-wins: enabling gives it the operation's dot, disabling drops what it had.
- map: (name, type) -> (presence dots, nested value). Any update of a field gives it the operation's
  dot; removing a field drops it. A field one side removed and the other updated concurrently
  survives with only what the remover had not seen (reset-remove).
- hll: HyperLogLog registers (precision 4-16), joined by per-register maximum; no removes.

A remove may name a context (the clock the client read): it removes only what that context covers.
When the coordinator has not yet seen all of that context, the remove is applied to what is here and
also kept in the state (deferred) until a join brings the clock past the context, then applied and
dropped. A remove without a context removes against the coordinator's state, and one of an element or
field that is not there is a failed precondition. A key's delete is `delete_state`: an empty state
whose clock is what the delete saw, so it removes exactly that.

Pure and deterministic; every limit is named in `Limits`; decoding validates everything and raises
CrdtError, never anything else.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import msgpack

from dynastore.core.versions import ACTOR_BYTES_MAX, COUNTER_MAX, Dot

DATATYPES = ("counter", "set", "map", "hll")
FIELD_TYPES = ("counter", "set", "register", "flag", "map")
CONTENT_TYPES = {
    "counter": "application/riak_counter",
    "set": "application/riak_set",
    "map": "application/riak_map",
    "hll": "application/riak_hll",
}
HLL_PRECISION_DEFAULT = 14
HLL_PRECISION_MIN = 4
HLL_PRECISION_MAX = 16
FORMAT_VERSION = 1
# What a stored state may hold whatever the node's limits (a decoded state beyond these is malformed).
DEPTH_HARD_MAX = 16
ENTRY_VALUE_MAX = (1 << 63) - 1

ErrorKind = Literal["bad_request", "too_large", "precondition"]


class CrdtError(ValueError):
    """An operation or a state that cannot be used; `kind` says why (400, 413 or 412)."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind


@dataclass(frozen=True, slots=True)
class Limits:
    set_elements_max: int = 10_000
    map_fields_max: int = 1_000
    depth_max: int = 4
    element_bytes_max: int = 64 * 1024
    deferred_max: int = 64
    state_bytes_max: int = 1024 * 1024


# --- Operations ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CounterOp:
    delta: int


@dataclass(frozen=True, slots=True)
class SetOp:
    adds: tuple[bytes, ...] = ()
    removes: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class HllOp:
    adds: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class RegisterOp:
    value: bytes


@dataclass(frozen=True, slots=True)
class FlagOp:
    enable: bool


@dataclass(frozen=True, slots=True)
class MapOp:
    # (name, type, operation); an operation None only adds the field (Riak's "add").
    updates: tuple[tuple[bytes, str, FieldOp | None], ...] = ()
    removes: tuple[tuple[bytes, str], ...] = ()


FieldOp = CounterOp | SetOp | RegisterOp | FlagOp | MapOp
Op = CounterOp | SetOp | MapOp | HllOp

# --- States ----------------------------------------------------------------------------------------

Clock = tuple[tuple[bytes, int], ...]
Dots = tuple[Dot, ...]
FieldKey = tuple[bytes, str]


@dataclass(frozen=True, slots=True)
class Deferred:
    """A remove with a context this state had not caught up with: applied once its clock descends
    `context`. `path` leads through map fields to the set or map holding the target; exactly one of
    `element` (in a set) and `field` (in a map) is set."""

    context: Clock
    path: tuple[FieldKey, ...]
    element: bytes | None = None
    field: FieldKey | None = None


@dataclass(frozen=True, slots=True)
class State:
    """One key's value. Bodies are canonical (sorted tuples), so equal states are equal values:
    counter ((actor, start, p, n, dot counter), ...); set ((element, dots), ...); map
    ((field key, presence dots, body), ...); hll (precision, registers); inside maps a register is
    its versions ((timestamp µs, value, dot), ...) and a flag its dots."""

    kind: str
    clock: Clock
    body: Any
    deferred: tuple[Deferred, ...] = field(default=())


def _empty_body(kind: str, precision: int = HLL_PRECISION_DEFAULT) -> Any:
    if kind == "hll":
        return (precision, bytes(1 << precision))
    return ()


def new(kind: str, hll_precision: int = HLL_PRECISION_DEFAULT) -> State:
    if kind not in DATATYPES:
        raise CrdtError("bad_request", f"unknown datatype {kind!r}")
    if not HLL_PRECISION_MIN <= hll_precision <= HLL_PRECISION_MAX:
        raise CrdtError("bad_request", f"hll_precision must be {HLL_PRECISION_MIN} to {HLL_PRECISION_MAX}")
    return State(kind, (), _empty_body(kind, hll_precision))


# --- Clocks and dots -------------------------------------------------------------------------------


def _covers(clock: Mapping[bytes, int], dot: Dot) -> bool:
    return dot.counter <= clock.get(dot.actor, 0)


def _descends(clock: Mapping[bytes, int], context: Clock) -> bool:
    return all(clock.get(actor, 0) >= counter for actor, counter in context)


def _clock_join(a: Mapping[bytes, int], b: Mapping[bytes, int]) -> dict[bytes, int]:
    out = dict(a)
    for actor, counter in b.items():
        if counter > out.get(actor, 0):
            out[actor] = counter
    return out


def _freeze_clock(clock: Mapping[bytes, int]) -> Clock:
    return tuple(sorted((a, c) for a, c in clock.items() if c > 0))


def _join_dots(da: Iterable[Dot], db: Iterable[Dot], ca: Mapping[bytes, int], cb: Mapping[bytes, int]) -> Dots:
    sa, sb = set(da), set(db)
    kept = (sa & sb) | {d for d in sa - sb if not _covers(cb, d)} | {d for d in sb - sa if not _covers(ca, d)}
    return tuple(sorted(kept))


def _filter_dots(dots: Iterable[Dot], clock: Mapping[bytes, int]) -> Dots:
    return tuple(sorted(d for d in dots if not _covers(clock, d)))


# --- Joins of bodies (a or b None: that side has nothing) -------------------------------------------


def _join_body(kind: str, a: Any, b: Any, ca: Mapping[bytes, int], cb: Mapping[bytes, int]) -> Any:
    if kind == "counter":
        return _join_counter(a or (), b or (), ca, cb)
    if kind == "set":
        return _join_set(a or (), b or (), ca, cb)
    if kind == "flag":
        return _join_dots(a or (), b or (), ca, cb)
    if kind == "register":
        return _join_register(a or (), b or (), ca, cb)
    if kind == "map":
        return _join_map(a or (), b or (), ca, cb)
    raise AssertionError(kind)


def _filter_body(kind: str, body: Any, clock: Mapping[bytes, int]) -> Any:
    """What of `body` a side whose clock is `clock` and who lacks it all has not seen."""
    return _join_body(kind, body, None, {}, clock)


def _join_counter(a: Any, b: Any, ca: Mapping[bytes, int], cb: Mapping[bytes, int]) -> Any:
    ea = {(e[0], e[1]): e for e in a}
    eb = {(e[0], e[1]): e for e in b}
    out = []
    for ident in sorted(ea.keys() | eb.keys()):
        x, y = ea.get(ident), eb.get(ident)
        if x is not None and y is not None:
            out.append(max(x, y, key=lambda e: (e[4], e[2], e[3])))
        elif x is not None:
            if not _covers(cb, Dot(x[0], x[4])):
                out.append(x)
        elif y is not None and not _covers(ca, Dot(y[0], y[4])):
            out.append(y)
    return tuple(out)


def _join_set(a: Any, b: Any, ca: Mapping[bytes, int], cb: Mapping[bytes, int]) -> Any:
    ea, eb = dict(a), dict(b)
    out = []
    for element in sorted(ea.keys() | eb.keys()):
        dots = _join_dots(ea.get(element, ()), eb.get(element, ()), ca, cb)
        if dots:
            out.append((element, dots))
    return tuple(out)


def _join_register(a: Any, b: Any, ca: Mapping[bytes, int], cb: Mapping[bytes, int]) -> Any:
    va = {v[2]: v for v in a}
    vb = {v[2]: v for v in b}
    kept = [va.get(d) or vb[d] for d in _join_dots(va, vb, ca, cb)]
    return tuple(sorted(kept, key=lambda v: v[2]))


def _join_map(a: Any, b: Any, ca: Mapping[bytes, int], cb: Mapping[bytes, int]) -> Any:
    fa = {f[0]: f for f in a}
    fb = {f[0]: f for f in b}
    out = []
    for key in sorted(fa.keys() | fb.keys()):
        x, y = fa.get(key), fb.get(key)
        presence = _join_dots(x[1] if x else (), y[1] if y else (), ca, cb)
        if not presence:
            continue
        body = _join_body(key[1], x[2] if x else None, y[2] if y else None, ca, cb)
        out.append((key, presence, body))
    return tuple(out)


def _join_hll(a: Any, b: Any) -> Any:
    if a[0] != b[0]:
        raise CrdtError("bad_request", f"HyperLogLogs of precisions {a[0]} and {b[0]} cannot be merged")
    return (a[0], bytes(max(x, y) for x, y in zip(a[1], b[1], strict=True)))


# --- Merge -----------------------------------------------------------------------------------------


def merge(a: State, b: State) -> State:
    """The join of two states of one key."""
    if a is b or a == b:
        return a
    if a.kind != b.kind:
        raise CrdtError("bad_request", f"a {a.kind} cannot be merged with a {b.kind}")
    ca, cb = dict(a.clock), dict(b.clock)
    clock = _clock_join(ca, cb)
    body = _join_hll(a.body, b.body) if a.kind == "hll" else _join_body(a.kind, a.body, b.body, ca, cb)
    deferred = tuple(sorted(set(a.deferred) | set(b.deferred), key=_deferred_key))
    return _settle(State(a.kind, _freeze_clock(clock), body, deferred))


def join_all(states: Iterable[State]) -> State | None:
    result: State | None = None
    for state in states:
        result = state if result is None else merge(result, state)
    return result


def delete_state(state: State, dot: Dot, seen: tuple[tuple[bytes, int], ...] | None = None) -> State:
    """What a delete of the key writes: nothing, with the clock of what it saw (and its own dot): the
    coordinator's state, and `seen`, the clock of the read that preceded it (what its client saw).
    An HLL has no removes: a delete empties it, and an HLL state concurrent with it comes back whole."""
    clock = _clock_join(dict(state.clock), {dot.actor: dot.counter})
    clock = _clock_join(clock, dict(seen or ()))
    precision = state.body[0] if state.kind == "hll" else HLL_PRECISION_DEFAULT
    # Removes still waiting for their context stay: what they name may arrive after the delete.
    return _settle(State(state.kind, _freeze_clock(clock), _empty_body(state.kind, precision), state.deferred))


# --- Deferred removes ------------------------------------------------------------------------------


def _deferred_key(d: Deferred) -> bytes:
    target = None if d.field is None else list(d.field)
    raw: bytes = msgpack.packb([[list(e) for e in d.context], [list(p) for p in d.path], d.element, target])
    return raw


def _remove_in(body: Any, kind: str, path: tuple[FieldKey, ...], d: Deferred, context: Mapping[bytes, int]) -> Any:
    """`body` (of `kind`) with the target of `d` below `path` stripped of what `context` covers."""
    if path:
        if kind != "map":
            return body
        head, rest = path[0], path[1:]
        out = []
        for key, presence, inner in body:
            if key == head:
                inner = _remove_in(inner, key[1], rest, d, context)
            out.append((key, presence, inner))
        return tuple(out)
    if d.element is not None and kind == "set":
        out_set = []
        for element, dots in body:
            if element == d.element:
                dots = _filter_dots(dots, context)
            if dots:
                out_set.append((element, dots))
        return tuple(out_set)
    if d.field is not None and kind == "map":
        out_map = []
        for key, presence, inner in body:
            if key == d.field:
                presence = _filter_dots(presence, context)
                if not presence:
                    continue
                inner = _filter_body(key[1], inner, context)
            out_map.append((key, presence, inner))
        return tuple(out_map)
    return body


def _settle(state: State) -> State:
    """Apply and drop every deferred remove whose context the clock now descends."""
    if not state.deferred:
        return state
    clock = dict(state.clock)
    body = state.body
    waiting = []
    for d in state.deferred:
        if _descends(clock, d.context):
            body = _remove_in(body, state.kind, d.path, d, dict(d.context))
        else:
            waiting.append(d)
    return State(state.kind, state.clock, body, tuple(waiting))


# --- Applying operations ---------------------------------------------------------------------------


@dataclass
class _Apply:
    dot: Dot
    now_us: int
    limits: Limits
    context: Clock | None
    clock: dict[bytes, int]
    seen: bool  # the state's clock (before the operation) descends the context
    deferred: list[Deferred]
    context_map: dict[bytes, int] = field(default_factory=dict)


def apply(
    state: State,
    op: Op,
    dot: Dot,
    now_us: int,
    limits: Limits,
    context: tuple[tuple[bytes, int], ...] | None = None,
) -> State:
    """The state once `op` is applied as `dot`; raises CrdtError and changes nothing when it cannot be."""
    before = dict(state.clock)
    if _covers(before, dot):
        raise CrdtError("bad_request", "the operation's dot was already applied")
    touched = _elements_named(op)
    if touched > limits.set_elements_max:
        # Bounds the work of one operation, whatever its size in bytes.
        raise CrdtError("too_large", f"an operation naming {touched} elements (limit {limits.set_elements_max})")
    ctx = None if context is None else tuple(sorted(dict(context).items()))
    run = _Apply(dot, now_us, limits, ctx, before, ctx is None or _descends(before, ctx), list(state.deferred))
    run.context_map = {} if ctx is None else dict(ctx)
    if state.kind == "counter":
        if not isinstance(op, CounterOp):
            raise CrdtError("bad_request", "a counter takes increment or decrement")
        body = _apply_counter(state.body, op, run)
    elif state.kind == "set":
        if not isinstance(op, SetOp):
            raise CrdtError("bad_request", "a set takes add, add_all, remove or remove_all")
        body = _apply_set(state.body, op, run, ())
    elif state.kind == "map":
        if not isinstance(op, MapOp):
            raise CrdtError("bad_request", "a map takes update and remove")
        body = _apply_map(state.body, op, run, (), 1)
    elif state.kind == "hll":
        if not isinstance(op, HllOp):
            raise CrdtError("bad_request", "a HyperLogLog takes add or add_all")
        body = _apply_hll(state.body, op, limits)
    else:
        raise CrdtError("bad_request", f"unknown datatype {state.kind!r}")
    if len(run.deferred) > len(state.deferred) and len(run.deferred) > limits.deferred_max:
        raise CrdtError(
            "too_large", f"more than {limits.deferred_max} removes wait for a context (deferred_max); retry later"
        )
    clock = _clock_join(before, {dot.actor: dot.counter})
    deferred = tuple(sorted(set(run.deferred), key=_deferred_key))
    result = _settle(State(state.kind, _freeze_clock(clock), body, deferred))
    size = len(encode(result))
    if size > limits.state_bytes_max:
        raise CrdtError("too_large", f"the {state.kind} would take {size} bytes (limit {limits.state_bytes_max})")
    return result


def _elements_named(op: Op | FieldOp | None) -> int:
    """How many elements and fields an operation names, nested ones included."""
    if isinstance(op, SetOp):
        return len(op.adds) + len(op.removes)
    if isinstance(op, HllOp):
        return len(op.adds)
    if isinstance(op, MapOp):
        return len(op.updates) + len(op.removes) + sum(_elements_named(u[2]) for u in op.updates)
    return 1


def _apply_counter(body: Any, op: CounterOp, run: _Apply) -> Any:
    actor = run.dot.actor
    entries = {(e[0], e[1]): list(e) for e in body}
    mine = sorted(ident for ident in entries if ident[0] == actor)
    if mine:
        entry = entries[mine[-1]]
    else:
        entry = entries[(actor, run.dot.counter)] = [actor, run.dot.counter, 0, 0, 0]
    if op.delta >= 0:
        entry[2] += op.delta
    else:
        entry[3] += -op.delta
    if entry[2] > ENTRY_VALUE_MAX or entry[3] > ENTRY_VALUE_MAX:
        raise CrdtError("bad_request", "the counter would pass its 64-bit range")
    entry[4] = run.dot.counter
    return tuple(tuple(entries[ident]) for ident in sorted(entries))


def _check_element(element: bytes, limits: Limits, what: str) -> None:
    if len(element) > limits.element_bytes_max:
        raise CrdtError("too_large", f"{what} of {len(element)} bytes (limit {limits.element_bytes_max})")


def _apply_set(body: Any, op: SetOp, run: _Apply, path: tuple[FieldKey, ...]) -> Any:
    elements = {e: dots for e, dots in body}
    for element in op.removes:
        if run.context is None:
            if element not in elements:
                raise CrdtError("precondition", f"{element.decode(errors='replace')!r} is not in the set")
            del elements[element]
            continue
        ctx = run.context_map
        if element in elements:
            kept = _filter_dots(elements[element], ctx)
            if kept:
                elements[element] = kept
            else:
                del elements[element]
        elif run.seen:
            raise CrdtError("precondition", f"{element.decode(errors='replace')!r} is not in the set")
        if not run.seen:
            run.deferred.append(Deferred(run.context, path, element=element))
    grows = len(elements) >= len(body)
    for element in op.adds:
        _check_element(element, run.limits, "a set element")
        elements[element] = (run.dot,)
        if grows and len(elements) > run.limits.set_elements_max:
            break
    if len(elements) > run.limits.set_elements_max and len(elements) > len(body):
        raise CrdtError(
            "too_large", f"a set of {len(elements)} elements (limit set_elements_max={run.limits.set_elements_max})"
        )
    return tuple(sorted(elements.items()))


def _apply_map(body: Any, op: MapOp, run: _Apply, path: tuple[FieldKey, ...], depth: int) -> Any:
    if depth > run.limits.depth_max:
        raise CrdtError("too_large", f"maps nested deeper than {run.limits.depth_max} levels (depth_max)")
    fields = {key: (presence, inner) for key, presence, inner in body}
    for key in op.removes:
        label = f"{key[0].decode(errors='replace')}_{key[1]}"
        if run.context is None:
            if key not in fields:
                raise CrdtError("precondition", f"field {label!r} is not in the map")
            del fields[key]
            continue
        ctx = run.context_map
        if key in fields:
            presence, inner = fields[key]
            presence = _filter_dots(presence, ctx)
            if presence:
                fields[key] = (presence, _filter_body(key[1], inner, ctx))
            else:
                del fields[key]
        elif run.seen:
            raise CrdtError("precondition", f"field {label!r} is not in the map")
        if not run.seen:
            run.deferred.append(Deferred(run.context, path, field=key))
    for name, kind, field_op in op.updates:
        key = (name, kind)
        _check_element(name, run.limits, "a field name")
        _, inner = fields.get(key, ((), ()))
        if field_op is not None:
            inner = _apply_field(inner, kind, field_op, run, (*path, key), depth)
        fields[key] = ((run.dot,), inner)
    if len(fields) > run.limits.map_fields_max and len(fields) > len(body):
        raise CrdtError(
            "too_large", f"a map of {len(fields)} fields (limit map_fields_max={run.limits.map_fields_max})"
        )
    return tuple((key, presence, inner) for key, (presence, inner) in sorted(fields.items()))


def _apply_field(inner: Any, kind: str, op: FieldOp, run: _Apply, path: tuple[FieldKey, ...], depth: int) -> Any:
    wrong = CrdtError("bad_request", f"a {kind} field cannot take {type(op).__name__}")
    if kind == "counter":
        if not isinstance(op, CounterOp):
            raise wrong
        return _apply_counter(inner, op, run)
    if kind == "set":
        if not isinstance(op, SetOp):
            raise wrong
        return _apply_set(inner, op, run, path)
    if kind == "register":
        if not isinstance(op, RegisterOp):
            raise wrong
        _check_element(op.value, run.limits, "a register value")
        timestamp = max([run.now_us, *(v[0] + 1 for v in inner)])
        return ((min(timestamp, COUNTER_MAX), op.value, run.dot),)
    if kind == "flag":
        if not isinstance(op, FlagOp):
            raise wrong
        return (run.dot,) if op.enable else ()
    if kind == "map":
        if not isinstance(op, MapOp):
            raise wrong
        return _apply_map(inner, op, run, path, depth + 1)
    raise CrdtError("bad_request", f"unknown field type {kind!r}")


def _hll_hash(element: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(element, digest_size=8).digest(), "big")


def _apply_hll(body: Any, op: HllOp, limits: Limits) -> Any:
    precision, registers = body
    out = bytearray(registers)
    width = 64 - precision
    for element in op.adds:
        _check_element(element, limits, "an element")
        h = _hll_hash(element)
        index = h >> width
        rest = h & ((1 << width) - 1)
        rank = width - rest.bit_length() + 1
        if rank > out[index]:
            out[index] = rank
    return (precision, bytes(out))


# --- Values ----------------------------------------------------------------------------------------


def _hll_estimate(body: Any) -> int:
    precision: int = body[0]
    registers: bytes = body[1]
    m = 1 << precision
    alpha = {16: 0.673, 32: 0.697, 64: 0.709}.get(m, 0.7213 / (1 + 1.079 / m))
    raw = alpha * m * m / sum(2.0**-r for r in registers)
    zeros = registers.count(0)
    if raw <= 2.5 * m and zeros:
        return round(m * math.log(m / zeros))
    return round(raw)


def _value_of(kind: str, body: Any) -> Any:
    if kind == "counter":
        return sum(e[2] for e in body) - sum(e[3] for e in body)
    if kind == "set":
        return [element for element, _ in body]
    if kind == "flag":
        return bool(body)
    if kind == "register":
        return max((v[0], v[1]) for v in body)[1] if body else None
    if kind == "map":
        out = {}
        for key, _, inner in body:
            if key[1] == "register" and not inner:
                continue
            out[key] = _value_of(key[1], inner)
        return out
    if kind == "hll":
        return _hll_estimate(body)
    raise AssertionError(kind)


def value(state: State) -> Any:
    """counter: int; set: sorted list of bytes; map: {(name, type): value}; hll: int (an estimate)."""
    return _value_of(state.kind, state.body)


def _json_of(kind: str, val: Any) -> Any:
    if kind == "set":
        return [e.decode("utf-8", "replace") for e in val]
    if kind == "register":
        return val.decode("utf-8", "replace")
    if kind == "map":
        return {f"{name.decode('utf-8', 'replace')}_{t}": _json_of(t, inner) for (name, t), inner in val.items()}
    return val


def to_json(state: State) -> Any:
    """Riak's HTTP JSON of the value: a number, a list of strings, or a map of `name_type` fields."""
    return _json_of(state.kind, value(state))


def clock_vector(state: State) -> tuple[tuple[bytes, int], ...]:
    """The clock, as the context handed to clients."""
    return state.clock


def is_empty(state: State) -> bool:
    if state.kind == "hll":
        return not any(state.body[1])
    return not state.body


# --- Encoding --------------------------------------------------------------------------------------

_KIND_CODES = {kind: i for i, kind in enumerate(DATATYPES)}


class _Actors:
    def __init__(self) -> None:
        self.names: list[bytes] = []
        self.index: dict[bytes, int] = {}

    def of(self, actor: bytes) -> int:
        i = self.index.get(actor)
        if i is None:
            i = self.index[actor] = len(self.names)
            self.names.append(actor)
        return i


def _collect(kind: str, body: Any, into: set[bytes]) -> None:
    if kind == "counter":
        into.update(e[0] for e in body)
    elif kind == "set":
        into.update(d.actor for _, dots in body for d in dots)
    elif kind == "flag":
        into.update(d.actor for d in body)
    elif kind == "register":
        into.update(v[2].actor for v in body)
    elif kind == "map":
        for key, presence, inner in body:
            into.update(d.actor for d in presence)
            _collect(key[1], inner, into)


def _enc_dots(dots: Iterable[Dot], actors: _Actors) -> list[Any]:
    return [[actors.of(d.actor), d.counter] for d in dots]


def _enc_body(kind: str, body: Any, actors: _Actors) -> Any:
    if kind == "counter":
        return [[actors.of(a), start, p, n, dc] for a, start, p, n, dc in body]
    if kind == "set":
        return [[element, _enc_dots(dots, actors)] for element, dots in body]
    if kind == "flag":
        return _enc_dots(body, actors)
    if kind == "register":
        return [[ts, val, [actors.of(dot.actor), dot.counter]] for ts, val, dot in body]
    if kind == "map":
        return [[k[0], k[1], _enc_dots(p, actors), _enc_body(k[1], inner, actors)] for k, p, inner in body]
    if kind == "hll":
        return [body[0], body[1]]
    raise AssertionError(kind)


def encode(state: State) -> bytes:
    """Canonical bytes: equal states encode equally. Actors are named once, in sorted order."""
    names: set[bytes] = {a for a, _ in state.clock}
    _collect(state.kind, state.body, names)
    for d in state.deferred:
        names.update(a for a, _ in d.context)
    actors = _Actors()
    for actor in sorted(names):
        actors.of(actor)
    data = [
        FORMAT_VERSION,
        _KIND_CODES[state.kind],
        actors.names,
        [[actors.of(a), c] for a, c in state.clock],
        _enc_body(state.kind, state.body, actors),
        [
            [
                [[actors.of(a), c] for a, c in d.context],
                [list(p) for p in d.path],
                d.element,
                None if d.field is None else list(d.field),
            ]
            for d in state.deferred
        ],
    ]
    raw: bytes = msgpack.packb(data, use_bin_type=True)
    return raw


class _Malformed(Exception):
    pass


def _need(cond: bool, what: str) -> None:
    if not cond:
        raise _Malformed(what)


def _int(x: Any, lo: int, hi: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and lo <= x <= hi


class _Decoder:
    def __init__(self, actors: list[bytes], clock: dict[bytes, int]) -> None:
        self.actors = actors
        self.clock = clock

    def actor(self, i: Any) -> bytes:
        _need(_int(i, 0, len(self.actors) - 1), "actor index out of range")
        actor: bytes = self.actors[int(i)]
        return actor

    def dot(self, raw: Any) -> Dot:
        _need(isinstance(raw, list) and len(raw) == 2, "malformed dot")
        dot = Dot(self.actor(raw[0]), _counter(raw[1]))
        _need(_covers(self.clock, dot), "a dot the clock does not cover")
        return dot

    def dots(self, raw: Any) -> Dots:
        _need(isinstance(raw, list), "malformed dots")
        dots = [self.dot(d) for d in raw]
        _need(dots == sorted(set(dots)), "dots not sorted and distinct")
        return tuple(dots)

    def body(self, kind: str, raw: Any, depth: int) -> Any:
        if kind == "counter":
            _need(isinstance(raw, list), "malformed counter")
            out = []
            for e in raw:
                _need(isinstance(e, list) and len(e) == 5, "malformed counter entry")
                actor = self.actor(e[0])
                _need(_int(e[2], 0, ENTRY_VALUE_MAX) and _int(e[3], 0, ENTRY_VALUE_MAX), "malformed counter entry")
                entry = (actor, _counter(e[1]), e[2], e[3], _counter(e[4]))
                _need(_covers(self.clock, Dot(actor, entry[4])), "a counter entry the clock does not cover")
                out.append(entry)
            _need([(e[0], e[1]) for e in out] == sorted({(e[0], e[1]) for e in out}), "counter entries not sorted")
            return tuple(out)
        if kind == "set":
            _need(isinstance(raw, list), "malformed set")
            out_set = []
            for e in raw:
                _need(isinstance(e, list) and len(e) == 2 and isinstance(e[0], bytes), "malformed set element")
                dots = self.dots(e[1])
                _need(bool(dots), "a set element without dots")
                out_set.append((e[0], dots))
            _need([e for e, _ in out_set] == sorted({e for e, _ in out_set}), "set elements not sorted")
            return tuple(out_set)
        if kind == "flag":
            return self.dots(raw)
        if kind == "register":
            _need(isinstance(raw, list), "malformed register")
            versions = []
            for v in raw:
                _need(isinstance(v, list) and len(v) == 3, "malformed register version")
                _need(_int(v[0], 0, COUNTER_MAX) and isinstance(v[1], bytes), "malformed register version")
                versions.append((v[0], v[1], self.dot(v[2])))
            version_dots = [v[2] for v in versions]
            _need(version_dots == sorted(set(version_dots)), "register versions not sorted and distinct")
            return tuple(versions)
        if kind == "map":
            _need(depth <= DEPTH_HARD_MAX, "maps nested too deep")
            _need(isinstance(raw, list), "malformed map")
            out_map = []
            for e in raw:
                _need(isinstance(e, list) and len(e) == 4, "malformed map field")
                name, field_kind = e[0], e[1]
                _need(isinstance(name, bytes) and field_kind in FIELD_TYPES, "malformed map field")
                presence = self.dots(e[2])
                _need(bool(presence), "a map field without presence")
                out_map.append(((name, field_kind), presence, self.body(field_kind, e[3], depth + 1)))
            keys = [k for k, _, _ in out_map]
            _need(keys == sorted(set(keys)), "map fields not sorted")
            return tuple(out_map)
        if kind == "hll":
            _need(isinstance(raw, list) and len(raw) == 2, "malformed hll")
            precision, registers = raw
            _need(_int(precision, HLL_PRECISION_MIN, HLL_PRECISION_MAX), "malformed hll precision")
            _need(isinstance(registers, bytes) and len(registers) == 1 << precision, "malformed hll registers")
            _need(max(registers) <= 64 - precision + 1, "malformed hll register")
            return (precision, registers)
        raise _Malformed(f"unknown kind {kind!r}")


def _counter(x: Any) -> int:
    _need(_int(x, 1, COUNTER_MAX), "malformed counter")
    counter: int = x
    return counter


def _clock_from(raw: Any, actors: list[bytes]) -> Clock:
    _need(isinstance(raw, list), "malformed clock")
    out = []
    for e in raw:
        _need(isinstance(e, list) and len(e) == 2 and _int(e[0], 0, len(actors) - 1), "malformed clock entry")
        out.append((actors[e[0]], _counter(e[1])))
    _need([a for a, _ in out] == sorted({a for a, _ in out}), "clock entries not sorted and distinct")
    return tuple(out)


def decode(raw: bytes) -> State:
    """Validate and rebuild a state; raises CrdtError for anything malformed."""
    try:
        data = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True)
        return _decode(data)
    except CrdtError:
        raise
    except (_Malformed, ValueError, TypeError, IndexError, KeyError, AssertionError, RecursionError) as exc:
        raise CrdtError("bad_request", f"malformed data type: {exc}") from None
    except Exception as exc:  # msgpack's own errors (ExtraData, FormatError, StackError, ...)
        raise CrdtError("bad_request", f"malformed data type: {exc}") from None


def _decode(data: Any) -> State:
    _need(isinstance(data, list) and len(data) == 6, "a data type must be a 6-element list")
    version, kind_code, actors, raw_clock, raw_body, raw_deferred = data
    _need(version == FORMAT_VERSION, f"unknown data type format {version!r}")
    _need(_int(kind_code, 0, len(DATATYPES) - 1), "unknown datatype")
    kind = DATATYPES[kind_code]
    _need(
        isinstance(actors, list) and all(isinstance(a, bytes) and 0 < len(a) <= ACTOR_BYTES_MAX for a in actors),
        "malformed actors",
    )
    _need(actors == sorted(set(actors)), "actors not sorted and distinct")
    clock = _clock_from(raw_clock, actors)
    decoder = _Decoder(actors, dict(clock))
    body = decoder.body(kind, raw_body, 1)
    _need(isinstance(raw_deferred, list), "malformed deferred removes")
    deferred = []
    for e in raw_deferred:
        _need(isinstance(e, list) and len(e) == 4, "malformed deferred remove")
        context = _clock_from(e[0], actors)
        _need(isinstance(e[1], list) and len(e[1]) <= DEPTH_HARD_MAX, "malformed deferred path")
        path = []
        for step in e[1]:
            _need(isinstance(step, list) and len(step) == 2 and isinstance(step[0], bytes), "malformed path")
            _need(step[1] in FIELD_TYPES, "malformed path")
            path.append((step[0], step[1]))
        element, raw_field = e[2], e[3]
        _need(element is None or isinstance(element, bytes), "malformed deferred element")
        target: FieldKey | None = None
        if raw_field is not None:
            _need(isinstance(raw_field, list) and len(raw_field) == 2 and isinstance(raw_field[0], bytes), "bad field")
            _need(raw_field[1] in FIELD_TYPES, "malformed deferred field")
            target = (raw_field[0], raw_field[1])
        _need((element is None) != (target is None), "a deferred remove names one element or one field")
        deferred.append(Deferred(context, tuple(path), element, target))
    _need(len(deferred) == len(set(deferred)), "a deferred remove given twice")
    state = State(kind, clock, body, tuple(sorted(deferred, key=_deferred_key)))
    _need(encode(state) == msgpack.packb(data, use_bin_type=True), "not in canonical form")
    return state


# --- Riak's JSON operations ------------------------------------------------------------------------


def _bad(message: str) -> CrdtError:
    return CrdtError("bad_request", message)


def _text(x: Any, what: str) -> bytes:
    if not isinstance(x, str):
        raise _bad(f"{what} must be a string")
    return x.encode("utf-8", "surrogatepass")


def _texts(x: Any, what: str) -> tuple[bytes, ...]:
    if not isinstance(x, list):
        raise _bad(f"{what} must be a list of strings")
    return tuple(_text(item, what) for item in x)


def _amount(x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or abs(x) > ENTRY_VALUE_MAX:
        raise _bad("a counter takes a 64-bit integer")
    return x


def _counter_op(body: Any) -> CounterOp:
    if isinstance(body, int) and not isinstance(body, bool):
        return CounterOp(_amount(body))
    if not isinstance(body, dict) or len(body) != 1 or not body.keys() <= {"increment", "decrement"}:
        raise _bad("a counter takes increment or decrement")
    if "increment" in body:
        return CounterOp(_amount(body["increment"]))
    return CounterOp(-_amount(body["decrement"]))


def _set_op(body: Any) -> SetOp:
    allowed = {"add", "add_all", "remove", "remove_all"}
    if not isinstance(body, dict) or not body or not body.keys() <= allowed:
        raise _bad("a set takes add, add_all, remove or remove_all")
    adds: tuple[bytes, ...] = (_text(body["add"], "add"),) if "add" in body else ()
    adds += _texts(body["add_all"], "add_all") if "add_all" in body else ()
    removes: tuple[bytes, ...] = (_text(body["remove"], "remove"),) if "remove" in body else ()
    removes += _texts(body["remove_all"], "remove_all") if "remove_all" in body else ()
    return SetOp(tuple(dict.fromkeys(adds)), tuple(dict.fromkeys(removes)))


def _hll_op(body: Any) -> HllOp:
    if not isinstance(body, dict) or not body or not body.keys() <= {"add", "add_all"}:
        raise _bad("a HyperLogLog takes add or add_all")
    adds: tuple[bytes, ...] = (_text(body["add"], "add"),) if "add" in body else ()
    adds += _texts(body["add_all"], "add_all") if "add_all" in body else ()
    return HllOp(adds)


def _field_key(text: Any) -> FieldKey:
    if not isinstance(text, str):
        raise _bad("a map field is named NAME_TYPE")
    name, sep, kind = text.rpartition("_")
    if not sep or not name:
        raise _bad(f"a map field is named NAME_TYPE (type one of {', '.join(FIELD_TYPES)}); got {text!r}")
    if kind not in FIELD_TYPES:
        raise _bad(f"unknown field type {kind!r} in {text!r}")
    return (name.encode("utf-8", "surrogatepass"), kind)


def _field_keys(x: Any) -> list[FieldKey]:
    items = [x] if isinstance(x, str) else x
    if not isinstance(items, list):
        raise _bad("remove takes a field name or a list of them")
    return [_field_key(item) for item in items]


def _field_op(kind: str, body: Any, depth: int) -> FieldOp:
    if kind == "counter":
        return _counter_op(body)
    if kind == "set":
        return _set_op(body)
    if kind == "register":
        if isinstance(body, dict) and body.keys() == {"assign"}:
            body = body["assign"]
        return RegisterOp(_text(body, "a register's value"))
    if kind == "flag":
        if body in ("enable", "disable"):
            return FlagOp(body == "enable")
        raise _bad('a flag takes "enable" or "disable"')
    return _map_op(body, depth + 1)


def _map_op(body: Any, depth: int = 1) -> MapOp:
    if depth > DEPTH_HARD_MAX:
        raise CrdtError("too_large", "maps nested too deep")
    if not isinstance(body, dict) or not body or not body.keys() <= {"update", "remove", "add"}:
        raise _bad("a map takes update, remove and add")
    updates: list[tuple[bytes, str, FieldOp | None]] = []
    raw_updates = body.get("update", {})
    if not isinstance(raw_updates, dict):
        raise _bad('update takes an object of "NAME_TYPE": operation')
    for text, raw in raw_updates.items():
        name, kind = _field_key(text)
        updates.append((name, kind, _field_op(kind, raw, depth)))
    for name, kind in _field_keys(body.get("add", [])):
        updates.append((name, kind, None))
    removes = _field_keys(body.get("remove", []))
    return MapOp(tuple(updates), tuple(dict.fromkeys(removes)))


def parse_op(kind: str, body: Any) -> tuple[Op, str | None]:
    """Riak's JSON operation (parsed JSON) for a `kind` data type, and its `"context"` when given."""
    context = None
    if isinstance(body, dict) and "context" in body:
        context = body["context"]
        if context is not None and not isinstance(context, str):
            raise _bad("context must be the string a fetch returned")
        body = {k: v for k, v in body.items() if k != "context"}
    if kind == "counter":
        return _counter_op(body), context
    if kind == "set":
        return _set_op(body), context
    if kind == "map":
        return _map_op(body), context
    if kind == "hll":
        return _hll_op(body), context
    raise _bad(f"unknown datatype {kind!r}")
