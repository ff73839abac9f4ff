"""Drives basho's Riak client (`riak` 2.7.0, over HTTP or Protocol Buffers) through secondary indexes and links
against the nodes given as arguments, and prints what it saw as one JSON object: objects tagged with
index entries and links, stored and fetched back, exact and range queries, terms, pagination by
continuation, streaming, and the $bucket index.

Run by test_riak_client.py with the client's own venv, like riak_client_scenario.py (whose shims it
uses). It judges nothing; the test asserts on the report.

Usage: [RIAK_CLIENT_PROTOCOL=pbc] python riak_client_index_scenario.py HOST:PORT [HOST:PORT ...]
"""

from __future__ import annotations

import json
import sys
import traceback
from typing import Any

from riak_client_scenario import PORT, PROTOCOL, apply_shims

BUCKET = "riak-client-2i"
PEOPLE = [("sean", "Sean", 1979), ("ada", "Ada", 1815), ("alan", "Alan", 1912), ("grace", "Grace", 1906)]


def run(nodes: list[tuple[str, int]], seen: dict[str, Any]) -> None:
    apply_shims()
    from riak import RiakClient

    client = RiakClient(protocol=PROTOCOL, nodes=[{"host": h, PORT: p} for h, p in nodes])
    bucket = client.bucket(BUCKET)

    seen["step"] = "store tagged objects"
    for key, name, year in PEOPLE:
        person = bucket.new(key, data={"name": name})
        person.add_index("fname_bin", name)
        person.add_index("byear_int", year)
        person.add_index("tag_bin", "person")
        person.add_link(bucket.new("sean"), "friend")
        person.store()

    seen["step"] = "fetch"
    fetched = client.bucket(BUCKET).get("alan")
    seen["indexes"] = sorted([field, value] for field, value in fetched.indexes)
    seen["links"] = [list(link) for link in fetched.links]

    seen["step"] = "queries"
    seen["exact"] = sorted(bucket.get_index("fname_bin", "Ada"))
    seen["range"] = list(bucket.get_index("byear_int", 1900, 1980))
    seen["terms"] = [list(pair) for pair in bucket.get_index("byear_int", 1800, 2000, return_terms=True)]
    seen["bucket_index"] = sorted(bucket.get_index("$bucket", BUCKET))

    seen["step"] = "pagination"
    pages = []
    page = bucket.get_index("tag_bin", "person", max_results=3)
    for _ in range(10):
        pages.append(list(page))
        if not page.has_next_page():
            break
        page = page.next_page()
    seen["pages"] = pages

    seen["step"] = "stream"
    streamed: list[str] = []
    # Iterating a streamed page closes its connection at the end.
    for chunk in bucket.stream_index("byear_int", 1800, 2000):
        streamed.extend(chunk)
    seen["streamed"] = streamed
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
