"""Secondary indexes and links over Riak's HTTP API, on real node processes: headers stored and given
back per sibling, bad ones refused with 400 and nothing stored, exact and range queries, $bucket and
$key, return_terms, pagination by continuation, streaming, typed paths, and a query that sees every
key once while a node is down."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from http_util import call, get, obj

from dynastore.localcluster import LocalCluster

MakeCluster = Callable[..., LocalCluster]


def index_url(base: str, bucket: str, field: str, *terms: str, query: str = "") -> str:
    path = "/".join(quote(t, safe="") for t in terms)
    return f"{base}/buckets/{bucket}/index/{quote(field, safe='')}/{path}" + (f"?{query}" if query else "")


def query_json(url: str) -> dict[str, Any]:
    status, _, body = call("GET", url)
    assert status == 200, (status, body)
    data: dict[str, Any] = json.loads(body)
    return data


def store(base: str, key: str, headers: dict[str, str], bucket: str = "people") -> None:
    status, _, body = call(
        "PUT", obj(base, bucket, key), b"v-" + key.encode(), {"Content-Type": "text/plain", **headers}
    )
    assert status == 204, (status, body)


def test_indexes_and_links_are_stored_returned_queried_and_paged_over_http(make_cluster: MakeCluster) -> None:
    """Index headers and links come back as sent; exact, range, $bucket and $key queries answer as
    Riak does; pages of max_results follow continuations to the end; stream=true is multipart; a key
    with siblings is indexed under the union of their entries, each shown with its sibling, and a
    delete unindexes it."""
    cluster = make_cluster(3)
    base = cluster[0].url
    for i in range(25):
        store(
            base,
            f"p{i:02d}",
            {
                "X-Riak-Index-Group_bin": f"g{i % 2}, all",
                "X-Riak-Index-age_int": str(20 + i),
                "Link": f'</buckets/people/keys/p{(i + 1) % 25:02d}>; riaktag="next", '
                '</riak/other/x%20y>; riaktag="a+tag"',
            },
        )
    status, headers, _ = get(cluster[1].url, "people", "p03")
    assert status == 200
    assert headers["X-Riak-Index-group_bin"] == "all, g1"
    assert headers["X-Riak-Index-age_int"] == "23"
    assert headers["Link"].startswith(
        '</buckets/people/keys/p04>; riaktag="next", </buckets/other/keys/x%20y>; riaktag="a+tag"'
    )
    assert '</buckets/people>; rel="up"' in headers["Link"]

    other = cluster[2].url
    assert query_json(index_url(other, "people", "group_bin", "g1"))["keys"] == [f"p{i:02d}" for i in range(1, 25, 2)]
    ranged = query_json(index_url(other, "people", "age_int", "30", "33", query="return_terms=true"))
    assert ranged == {"results": [{"30": "p10"}, {"31": "p11"}, {"32": "p12"}, {"33": "p13"}]}
    assert sorted(query_json(index_url(other, "people", "$bucket", "people"))["keys"]) == [
        f"p{i:02d}" for i in range(25)
    ]
    assert query_json(index_url(other, "people", "$key", "p05", "p07"))["keys"] == ["p05", "p06", "p07"]

    seen: list[str] = []
    continuation = None
    for _ in range(20):
        q = "max_results=4" + (f"&continuation={continuation}" if continuation else "")
        page = query_json(index_url(base, "people", "age_int", "0", "1000", query=q))
        assert len(page["keys"]) <= 4
        seen += page["keys"]
        continuation = page.get("continuation")
        if continuation is None:
            break
    assert seen == [f"p{i:02d}" for i in range(25)]

    status, headers, body = call(
        "GET", index_url(base, "people", "group_bin", "all", query="stream=true&max_results=10")
    )
    assert status == 200 and headers["Content-Type"].startswith("multipart/mixed; boundary=")
    boundary = headers["Content-Type"].split("boundary=")[1]
    parts = [p for p in body.split(f"--{boundary}".encode()) if p.strip() not in (b"", b"--")]
    decoded = [json.loads(p.split(b"\r\n\r\n", 1)[1]) for p in parts]
    assert [k for d in decoded for k in d.get("keys", [])] == [f"p{i:02d}" for i in range(10)]
    assert "continuation" in decoded[-1]

    assert query_json(index_url(base, "people", "group_bin", "g0").replace("/buckets/", "/types/default/buckets/"))[
        "keys"
    ] == [f"p{i:02d}" for i in range(0, 25, 2)]

    # Two concurrent writes with different entries: the key is found under both, each sibling shows its
    # own in a multipart answer; once deleted it is found under neither.
    store(base, "k", {"X-Riak-Index-colour_bin": "red"}, bucket="s")
    store(cluster[1].url, "k", {"X-Riak-Index-colour_bin": "blue"}, bucket="s")
    assert query_json(index_url(base, "s", "colour_bin", "red"))["keys"] == ["k"]
    assert query_json(index_url(base, "s", "colour_bin", "blue"))["keys"] == ["k"]
    status, headers, body = call("GET", obj(base, "s", "k"), headers={"Accept": "multipart/mixed"})
    assert status == 300
    assert sorted(re.findall(rb"X-Riak-Index-colour_bin: (\w+)", body)) == [b"blue", b"red"]
    status, _, _ = call("DELETE", obj(base, "s", "k"), headers={"X-Riak-Vclock": headers["X-Riak-Vclock"]})
    assert status == 204
    assert query_json(index_url(base, "s", "colour_bin", "blue", "red"))["keys"] == []


def test_bad_index_or_link_headers_are_a_400_and_store_nothing(make_cluster: MakeCluster) -> None:
    """Unknown suffixes, non-integer _int terms, malformed Link headers and bad queries are refused
    with a reason, and the object is not written."""
    cluster = make_cluster(1, "n_val=1", "r=1", "w=1")
    base = cluster[0].url
    for headers, reason in (
        ({"X-Riak-Index-name": "x"}, "_bin or _int"),
        ({"X-Riak-Index-age_int": "twelve"}, "must be an integer"),
        ({"X-Riak-Index-age_int": "99999999999999999999"}, "64-bit"),
        ({"Link": "not a link"}, "bad Link header"),
        ({"Link": '</elsewhere/b/k>; riaktag="t"'}, "is not /buckets/B/keys/K"),
    ):
        status, _, body = call("PUT", obj(base, "b", "k"), b"v", {"Content-Type": "text/plain", **headers})
        assert status == 400 and reason in body.decode(), (headers, status, body)
        assert get(base, "b", "k")[0] == 404
    for url, reason in (
        (index_url(base, "b", "age_int", "x"), "must be an integer"),
        (index_url(base, "b", "nosuffix", "x"), "_bin or _int"),
        (index_url(base, "b", "a_bin", "x", query="continuation=%%%"), "invalid continuation"),
        (index_url(base, "b", "a_bin", "x", query="continuation=AAAA"), "invalid continuation"),
        (index_url(base, "b", "a_bin", "x", query="max_results=0"), "max_results"),
    ):
        status, _, body = call("GET", url)
        assert status == 400 and reason in body.decode(), (url, status, body)


def test_a_query_sees_every_key_once_with_a_node_down_and_the_python_client_pages_through_it(
    make_cluster: MakeCluster,
) -> None:
    """dynastore's own HTTP client tags objects with indexes (what a fault test writing and querying
    indexed objects uses); with a node stopped, a coverage query answers from the remaining replicas,
    page by page to the end."""
    import asyncio

    from dynastore.client.http import HttpClient

    # Four nodes: each holds three quarters of the partitions, so a query asks the others too.
    cluster = make_cluster(4, "index_replica_timeout_ms=500")
    urls = [node.url for node in cluster.nodes]

    async def write() -> None:
        async with HttpClient(urls) as client:
            for i in range(30):
                await client.put("d", f"k{i:02d}", b"v", indexes={"n_int": [i], "all_bin": ["yes"]})

    async def read() -> tuple[list[str], list[tuple[str | int | None, str]]]:
        async with HttpClient(urls[:2]) as client:
            keys: list[str] = []
            continuation = None
            for _ in range(20):
                page = await client.index("d", "all_bin", "yes", max_results=7, continuation=continuation)
                keys += page.keys
                continuation = page.continuation
                if continuation is None:
                    break
            terms = await client.index("d", "n_int", 3, 5, return_terms=True, timeout_ms=20_000)
            return keys, list(terms.results)

    asyncio.run(write())
    cluster[3].kill()
    keys, terms = asyncio.run(read())
    assert keys == [f"k{i:02d}" for i in range(30)]
    assert terms == [(3, "k03"), (4, "k04"), (5, "k05")]
