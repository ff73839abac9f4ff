"""Drives basho's Riak client (`riak` 2.7.0, HTTP transport) through Riak 2's data types against the
nodes given as arguments, in bucket types the test created with the CLI, and prints what it saw as
one JSON object (as riak_client_scenario.py does for plain objects: it records, the test judges).

Usage: [RIAK_CLIENT_PROTOCOL=pbc] python riak_client_dt_scenario.py HOST:PORT [HOST:PORT ...]
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from riak_client_scenario import PORT, PROTOCOL, apply_shims


def plain(value: Any) -> Any:
    """A value the client decoded, as JSON can carry it (map keys are (name, type) pairs, sets frozensets)."""
    if isinstance(value, dict):
        return {f"{name}_{kind}": plain(inner) for (name, kind), inner in sorted(value.items())}
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    return value


def run(nodes: list[tuple[str, int]], seen: dict[str, Any]) -> None:
    apply_shims()
    from riak import RiakClient, RiakError
    from riak.datatypes import Counter, Hll, Map, Set

    each_node = [RiakClient(protocol=PROTOCOL, nodes=[{"host": h, PORT: p}]) for h, p in nodes]
    first = each_node[0]

    seen["step"] = "bucket type properties"
    props = first.bucket_type("counters").get_properties()
    seen["type_props"] = {"datatype": props.get("datatype"), "active": props.get("active")}

    seen["step"] = "counter"
    for i, client in enumerate(each_node):
        counter = Counter(client.bucket_type("counters").bucket("c"), "hits")
        counter.increment(i + 1)
        counter.store()
    seen["counter"] = [c.bucket_type("counters").bucket("c").get("hits").value for c in each_node]
    counter = first.bucket_type("counters").bucket("c").get("hits")
    counter.decrement(2)
    counter.store(return_body=True)
    seen["counter_after_decrement"] = counter.value
    seen["counter_missing"] = first.bucket_type("counters").bucket("c").get("absent").value

    seen["step"] = "set"
    tags = Set(each_node[0].bucket_type("sets").bucket("s"), "tags")
    for tag in ("red", "green", "blue"):
        tags.add(tag)
    tags.store()
    fetched = each_node[1].bucket_type("sets").bucket("s").get("tags")
    seen["set"] = sorted(fetched.value)
    seen["set_has_context"] = fetched.context is not None
    fetched.discard("red")
    fetched.store()
    seen["set_after_discard"] = [sorted(c.bucket_type("sets").bucket("s").get("tags").value) for c in each_node]

    seen["step"] = "map"
    user = Map(each_node[2].bucket_type("maps").bucket("m"), "ada")
    user.registers["name"].assign("Ada")
    user.counters["visits"].increment(3)
    user.flags["admin"].enable()
    user.sets["langs"].add("en")
    user.sets["langs"].add("fr")
    user.maps["address"].registers["city"].assign("London")
    user.store()
    fetched_map = each_node[0].bucket_type("maps").bucket("m").get("ada")
    seen["map"] = plain(fetched_map.value)
    del fetched_map.sets["langs"]
    fetched_map.counters["visits"].increment(1)
    fetched_map.store()
    seen["map_after_remove"] = plain(each_node[1].bucket_type("maps").bucket("m").get("ada").value)

    seen["step"] = "hll"
    hll = Hll(each_node[1].bucket_type("hlls").bucket("h"), "visitors")
    for i in range(300):
        hll.add(f"visitor-{i}")
    hll.store()
    seen["hll"] = each_node[2].bucket_type("hlls").bucket("h").get("visitors").value

    seen["step"] = "delete"
    gone = each_node[0].bucket_type("sets").bucket("s").get("tags")
    gone.delete()
    seen["set_after_delete"] = [plain(c.bucket_type("sets").bucket("s").get("tags").value) for c in each_node]

    seen["step"] = "a wrong operation"
    try:
        wrong = Counter(first.bucket_type("sets").bucket("s"), "wrong")
        wrong.increment(1)
        wrong.store()
        seen["wrong_type"] = "stored"
    except RiakError as exc:
        seen["wrong_type"] = str(exc)
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
