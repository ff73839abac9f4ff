"""Drives basho's Riak client (`riak` 2.7.0, HTTP transport) through store, fetch, siblings, resolution
and delete against the nodes given as arguments, and prints what it saw as one JSON object.

Run by test_riak_client.py with the interpreter of the client's own venv (see riak_client_env.py);
the test imports it only for its names (the riak import happens inside `run`). It judges nothing: it
records observations and the test asserts on them. If a step raises, the report names the step and
carries the traceback, with everything seen before it.

Usage: [RIAK_CLIENT_PROTOCOL=pbc] python riak_client_scenario.py HOST:PORT [HOST:PORT ...]
"""

from __future__ import annotations

import collections
import collections.abc
import json
import os
import sys
import traceback
from typing import Any

# The client's transport: "http" (the nodes given are HTTP ports) or "pbc" (Protocol Buffers ports).
PROTOCOL = os.environ.get("RIAK_CLIENT_PROTOCOL", "http")
PORT = "pb_port" if PROTOCOL == "pbc" else "http_port"

BUCKET = "riak-client"
# A slash, a space, a plus and a non-ASCII letter: the client escapes it with quote_plus.
KEY = "users/ada lovelace+admin ü"
SIBLINGS_BUCKET = "riak-client-siblings"
SIBLINGS_KEY = "doc"
# Written, and refused, in bucket type "maps", which does not exist here.
TYPED_KEY = "typed"
# Stored by the test over plain HTTP before this script runs; read here.
FROM_PLAIN_HTTP_KEY = "written by plain http"
# Stored here and left in place for the test to read over plain HTTP afterwards.
FOR_PLAIN_HTTP_KEY = "written by riak client"


def apply_shims() -> None:
    """What riak 2.7.0 (2016) needs to import on Python 3.10 and later: the collection ABCs it takes
    from `collections`, and namedtuple's `verbose` argument (removed in 3.7)."""
    for name in collections.abc.__all__:
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
    original = collections.namedtuple

    def namedtuple(*args: Any, verbose: bool = False, **kwargs: Any) -> Any:
        return original(*args, **kwargs)

    collections.namedtuple = namedtuple


def as_bytes(value: str | bytes) -> bytes:
    # The client keeps a multipart sibling's body as str (it decodes the whole response), others as bytes.
    return value if isinstance(value, bytes) else value.encode()


def run(nodes: list[tuple[str, int]], seen: dict[str, Any]) -> None:
    apply_shims()
    from riak import RiakClient, RiakError

    client = RiakClient(protocol=PROTOCOL, nodes=[{"host": h, PORT: p} for h, p in nodes])
    each_node = [RiakClient(protocol=PROTOCOL, nodes=[{"host": h, PORT: p}]) for h, p in nodes]

    seen["step"] = "feature detection"
    seen["ping"] = [c.ping() for c in each_node]
    with client._transport() as transport:
        seen["server_version"] = transport.server_version.vstring
        seen["features"] = {
            "bucket_types": transport.bucket_types(),
            "preflists": transport.preflists(),
            "tombstone_vclocks": transport.tombstone_vclocks(),
            "quorum_controls": transport.quorum_controls(),
        }

    seen["step"] = "bucket properties"
    bucket = client.bucket(BUCKET)
    bucket.set_property("allow_mult", True)
    props = bucket.get_properties()
    seen["props"] = {name: props.get(name) for name in ("allow_mult", "n_val", "last_write_wins")}

    seen["step"] = "a bucket of another type"
    typed = client.bucket_type("maps").bucket(BUCKET)
    try:
        typed.new(TYPED_KEY, encoded_data=b"typed", content_type="text/plain").store()
        seen["named_type_store"] = "stored"
    except RiakError as exc:
        seen["named_type_store"] = str(exc)
    seen["named_type_leaked_into_default"] = bucket.get(TYPED_KEY).exists

    seen["step"] = "store"
    obj = bucket.new(KEY, data={"name": "Ada", "langs": ["en", "fr"]}, content_type="application/json")
    obj.charset = "utf-8"
    obj.usermeta = {"colour": "blue", "owner": "ada"}
    obj.store()
    seen["stored"] = {"key": obj.key, "has_vclock": obj.vclock is not None, "etag": obj.etag, "data": obj.data}

    seen["step"] = "fetch"
    seen["fetched"] = []
    for c in each_node:
        got = c.bucket(BUCKET).get(KEY)
        seen["fetched"].append(
            {
                "exists": got.exists,
                "data": got.data,
                "content_type": got.content_type,
                "charset": got.charset,
                "usermeta": got.usermeta,
                "etag": got.etag,
                "last_modified": got.last_modified,
                "siblings": len(got.siblings),
            }
        )
    plain = bucket.get(FROM_PLAIN_HTTP_KEY)
    seen["from_plain_http"] = {"data": as_bytes(plain.encoded_data).decode(), "usermeta": plain.usermeta}
    bucket.new(FOR_PLAIN_HTTP_KEY, encoded_data=b"hello from riak", content_type="text/plain").store()

    seen["step"] = "store only if absent"
    try:
        bucket.new(KEY, data={"name": "impostor"}).store(if_none_match=True)
        seen["if_none_match"] = "stored"
    except RiakError as exc:
        seen["if_none_match"] = str(exc)
    seen["after_if_none_match"] = bucket.get(KEY).data

    seen["step"] = "store with a server-chosen key"
    generated = bucket.new(data={"generated": True})
    generated.store()
    seen["generated"] = {"key": generated.key, "data": bucket.get(generated.key).data}
    seen["keys"] = sorted(bucket.get_keys())
    seen["streamed_keys"] = sorted(key for chunk in bucket.stream_keys() for key in chunk)
    seen["preflist"] = client.get_preflist(bucket, KEY)

    seen["step"] = "siblings"
    siblings = client.bucket(SIBLINGS_BUCKET)
    siblings.new(SIBLINGS_KEY, encoded_data=b"original", content_type="text/plain").store()
    stale = siblings.get(SIBLINGS_KEY).vclock
    for value in (b"left", b"right"):
        writer = siblings.new(SIBLINGS_KEY, encoded_data=value, content_type="text/plain")
        writer.vclock = stale
        writer.store(return_body=False)
    conflicted = siblings.get(SIBLINGS_KEY)
    seen["siblings"] = {
        "count": len(conflicted.siblings),
        "values": sorted(as_bytes(s.encoded_data).decode() for s in conflicted.siblings),
        "content_types": sorted(s.content_type for s in conflicted.siblings),
        "etags_distinct": len({s.etag for s in conflicted.siblings}),
    }
    try:
        _ = conflicted.data
        seen["siblings"]["reading_one_value"] = "allowed"
    except RiakError as exc:
        seen["siblings"]["reading_one_value"] = type(exc).__name__

    seen["step"] = "resolve"
    calls: list[int] = []

    def merge_siblings(riak_object: Any) -> None:
        calls.append(len(riak_object.siblings))
        merged = b" & ".join(sorted(as_bytes(s.encoded_data) for s in riak_object.siblings))
        keep = riak_object.siblings[0]
        keep.encoded_data = merged
        riak_object.siblings = [keep]

    siblings.resolver = merge_siblings
    resolved = siblings.get(SIBLINGS_KEY)
    resolved.store()
    siblings.resolver = None
    seen["resolver_saw"] = calls
    seen["after_resolution"] = [
        sorted(as_bytes(s.encoded_data).decode() for s in c.bucket(SIBLINGS_BUCKET).get(SIBLINGS_KEY).siblings)
        for c in each_node
    ]

    seen["step"] = "delete"
    for name, key in ((BUCKET, KEY), (SIBLINGS_BUCKET, SIBLINGS_KEY)):
        client.bucket(name).get(key).delete()
    bucket.delete(generated.key)
    seen["exists_after_delete"] = [
        [c.bucket(name).get(key).exists for c in each_node]
        for name, key in ((BUCKET, KEY), (SIBLINGS_BUCKET, SIBLINGS_KEY), (BUCKET, generated.key))
    ]
    seen["step"] = "done"


def main() -> None:
    nodes = []
    for arg in sys.argv[1:]:
        host, _, port = arg.rpartition(":")
        nodes.append((host, int(port)))
    seen: dict[str, Any] = {}
    try:
        run(nodes, seen)
    except Exception:
        seen["error"] = traceback.format_exc()
    print(json.dumps(seen, default=repr))


if __name__ == "__main__":
    main()
