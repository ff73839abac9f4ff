"""Riak's PB data-type messages and dynastore's data types: DtOp as the JSON operation the HTTP API
takes (crdt.parse_op checks both the same way), and a state's value as DtValue / MapEntry.

Values cross as text, as Riak's JSON operations carry them: a set element, map field name or register
value that is not UTF-8 is refused (PbError), never stored mangled. Pure: messages in, dicts out.
"""

from __future__ import annotations

from typing import Any, Final

from dynastore.api.pb.listener import PbError, utf8

# Data types as DtFetchResp names them.
DT_TYPES: Final = {"counter": 1, "set": 2, "map": 3, "hll": 4}
FIELD_TYPES: Final = {1: "counter", 2: "set", 3: "register", 4: "flag", 5: "map"}
FIELD_CODES: Final = {name: code for code, name in FIELD_TYPES.items()}


def map_entries(value: dict[tuple[bytes, str], Any], into: Any) -> None:
    for (name, kind), inner in sorted(value.items()):
        entry = into.add()
        entry.field.name = name
        entry.field.type = FIELD_CODES[kind]
        if kind == "counter":
            entry.counter_value = inner
        elif kind == "set":
            entry.set_value.extend(inner)
        elif kind == "register":
            entry.register_value = inner
        elif kind == "flag":
            entry.flag_value = inner
        else:
            map_entries(inner, entry.map_value)


def _element(raw: bytes) -> str:
    # Riak's JSON operations carry text, and the data types store what they carry.
    return utf8(raw, "a data-type element, field name or register value")


def _counter_json(op: Any) -> dict[str, Any]:
    return {"increment": op.increment if op.HasField("increment") else 1}


def _set_json(op: Any) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if len(op.adds):
        body["add_all"] = [_element(e) for e in op.adds]
    if len(op.removes):
        body["remove_all"] = [_element(e) for e in op.removes]
    if not body:
        raise PbError("a set operation adds or removes at least one element")
    return body


def _field_name(field: Any) -> str:
    kind = FIELD_TYPES.get(field.type)
    if kind is None:
        raise PbError(f"unknown map field type {field.type}")
    return f"{_element(field.name)}_{kind}"


def _map_json(op: Any) -> dict[str, Any]:
    updates: dict[str, Any] = {}
    adds: list[str] = []
    for upd in op.updates:
        name = _field_name(upd.field)
        kind = FIELD_TYPES[upd.field.type]
        given = [f for f in ("counter_op", "set_op", "register_op", "flag_op", "map_op") if upd.HasField(f)]
        if not given:
            adds.append(name)
            continue
        if given != [f"{kind}_op"]:
            raise PbError(f"map field {name} of type {kind} takes a {kind}_op (got {', '.join(given)})")
        if kind == "counter":
            updates[name] = _counter_json(upd.counter_op)
        elif kind == "set":
            updates[name] = _set_json(upd.set_op)
        elif kind == "register":
            updates[name] = {"assign": _element(upd.register_op)}
        elif kind == "flag":
            updates[name] = "enable" if upd.flag_op == 1 else "disable"
        else:
            updates[name] = _map_json(upd.map_op)
    body: dict[str, Any] = {}
    if updates:
        body["update"] = updates
    if adds:
        body["add"] = adds
    if len(op.removes):
        body["remove"] = [_field_name(f) for f in op.removes]
    if not body:
        raise PbError("a map operation updates or removes at least one field")
    return body


def dt_op(op: Any, datatype: str) -> dict[str, Any]:
    """DtOp as Riak's JSON operation on a `datatype`; an operation of another type is refused."""
    given = [f.name for f, _ in op.ListFields()]
    wanted = {"counter": "counter_op", "set": "set_op", "map": "map_op", "hll": "hll_op"}[datatype]
    if given != [wanted]:
        named = ", ".join(given) or "no operation"
        raise PbError(f"the bucket type holds {datatype}s: DtOp must carry {wanted} alone (got {named})")
    if datatype == "counter":
        return _counter_json(op.counter_op)
    if datatype == "set":
        return _set_json(op.set_op)
    if datatype == "hll":
        if not len(op.hll_op.adds):
            raise PbError("a HyperLogLog operation adds at least one element")
        return {"add_all": [_element(e) for e in op.hll_op.adds]}
    return _map_json(op.map_op)
