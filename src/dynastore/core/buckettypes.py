"""Bucket types, as in Riak 2: named sets of bucket properties that an operator creates and activates,
and a second level of namespace (type, bucket, key).

Theory of operation
-------------------
- A type is cluster metadata (membership.py keeps the records, gossips and persists them): its
  properties, whether it is active, and a (version, author) stamp that decides concurrent changes.
  `create` makes an inactive type; `activate` makes it usable; `update` changes its properties. A
  type is never created by an update and never deleted (as in Riak).
- `datatype` (counter, set, map, hll) makes every key of the type a convergent data type (crdt.py);
  it can change while the type is inactive and never after. `hll_precision` is fixed at creation.
- The `default` type is what exists without types: its buckets are named by their bare bytes, so
  their keys keep their hash and storage layout. A bucket of another type is named inside the node by
  `NUL | type | NUL | bucket` (`typed`); the type name holds no NUL and a default bucket may not start
  with one, so the two never collide, and a typed key's position hashes its type, bucket and key.
- A bucket's properties are the node's defaults, overlaid by its type's, overlaid by its own.

Pure: names and dictionaries in, names, dictionaries and reasons out.
"""

from __future__ import annotations

import re
from typing import Any

from dynastore.core import bucketprops, crdt

DEFAULT = "default"
TYPE_NAME_BYTES_MAX = 64
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
# What a type may set beyond a bucket's properties.
TYPE_ONLY_PROPS = ("datatype", "hll_precision")
TYPE_PROPS = bucketprops.BUCKET_PROPS + TYPE_ONLY_PROPS
HLL_PRECISION_MIN = 4
HLL_PRECISION_MAX = 16
_MARK = b"\x00"


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a bucket type, or None."""
    if not _NAME.fullmatch(name):
        return f"a bucket type name is 1 to {TYPE_NAME_BYTES_MAX} letters, digits, '_', '.' or '-'"
    return None


def typed(type_name: str, bucket: bytes) -> bytes:
    """The name a node uses for bucket `bucket` of type `type_name` (the bare bucket for `default`)."""
    if type_name == DEFAULT:
        return bucket
    return _MARK + type_name.encode() + _MARK + bucket


def split(internal: bytes) -> tuple[str, bytes]:
    """(type, bucket) of a name made by `typed`; a name that is not well formed is returned as a
    bucket of the default type (name_problem then refuses it)."""
    if not internal.startswith(_MARK):
        return DEFAULT, internal
    end = internal.find(_MARK, 1)
    if end < 0:
        return DEFAULT, internal
    return internal[1:end].decode("ascii", "replace"), internal[end + 1 :]


def is_typed(internal: bytes) -> bool:
    return internal.startswith(_MARK)


def internal_problem(internal: bytes) -> str | None:
    """Why a node-side bucket name is malformed (a default bucket starting with NUL, a typed name with
    a bad type), or None. The bucket part's own length is checked by keys.name_problem."""
    if not internal.startswith(_MARK):
        return None
    end = internal.find(_MARK, 1)
    if end < 0:
        return "a bucket name may not start with a NUL byte"
    try:
        type_name = internal[1:end].decode("ascii")
    except UnicodeDecodeError:
        return "malformed bucket type name"
    if type_name == DEFAULT:
        return "the default type's buckets are named without a type"
    return name_problem(type_name)


def check_props(props: dict[str, Any]) -> str | None:
    """Why properties as a type record stores them cannot be any honest node's (a gossiped state is
    checked with this), or None."""
    own = {k: v for k, v in props.items() if k not in TYPE_ONLY_PROPS}
    problem = bucketprops.stored_problem(own)
    if problem is not None:
        return problem
    datatype = props.get("datatype")
    if datatype is not None and datatype not in crdt.DATATYPES:
        return f"datatype must be one of {', '.join(crdt.DATATYPES)}"
    precision = props.get("hll_precision")
    if precision is not None and (
        isinstance(precision, bool)
        or not isinstance(precision, int)
        or not HLL_PRECISION_MIN <= precision <= HLL_PRECISION_MAX
    ):
        return f"hll_precision must be an integer from {HLL_PRECISION_MIN} to {HLL_PRECISION_MAX}"
    return None


def change_problem(
    current: dict[str, Any] | None, active: bool, changes: dict[str, Any], merged: dict[str, Any]
) -> str | None:
    """Why `changes` (on top of the stored `current`; None: a new type) cannot be made, giving
    `merged` as the type's complete properties; None when it can."""
    unknown = sorted(set(changes) - set(TYPE_PROPS))
    if unknown:
        return f"unknown bucket type properties: {', '.join(unknown)}"
    if "datatype" in changes and changes["datatype"] is None:
        changes = {k: v for k, v in changes.items() if k != "datatype"}
    problem = check_props({k: v for k, v in changes.items() if v is not None})
    if problem is not None:
        return problem
    if current is not None:
        if active and "datatype" in changes and changes["datatype"] != current.get("datatype"):
            return "datatype is fixed once a bucket type is active"
        fixed = current.get("hll_precision")
        if "hll_precision" in changes and fixed is not None and changes["hll_precision"] != fixed:
            return "hll_precision is fixed once a bucket type is created"
    if "hll_precision" in merged and merged.get("datatype") != "hll":
        return "hll_precision is a property of types whose datatype is hll"
    if merged.get("datatype") is not None and (merged.get("allow_mult") is False or merged.get("last_write_wins")):
        return "a datatype needs allow_mult=true and last_write_wins=false"
    return None


def bucket_change_problem(changes: dict[str, Any], type_props: dict[str, Any]) -> str | None:
    """Why a typed bucket's own change is refused, or None: the type-only properties stay the type's."""
    for name in TYPE_ONLY_PROPS:
        if name in changes and changes[name] != type_props.get(name):
            return f"{name} is a property of the bucket type"
    return None
