"""The Riak-compatible HTTP API on a live 3-node cluster: what each resource answers, what every kind of
bad input gets (a 4xx, and nothing changed), and, under random requests, never a 500.

One cluster serves the whole module; each test uses buckets of its own.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import email.utils
import gzip
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_to_bytes, urlencode

import pytest
from cluster_settings import FAST
from http_util import call
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynastore.localcluster import LocalCluster, http_json

Headers = dict[str, Any]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[LocalCluster]:
    failed_before = request.session.testsfailed
    running = LocalCluster(tmp_path_factory.mktemp("http-api"), 3, overrides=FAST)
    try:
        running.start()
        running.wait_ready(60)
        yield running
    finally:
        if request.session.testsfailed > failed_before:
            print(running.logs(60))
        running.close()


@pytest.fixture
def base(cluster: LocalCluster) -> str:
    return cluster[0].url


def path(bucket: str | bytes, key: str | bytes | None = None, prefix: str = "/buckets") -> str:
    b = quote(bucket, safe="")
    return f"{prefix}/{b}" if key is None else f"{prefix}/{b}/keys/{quote(key, safe='')}"


def lowered(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def put(base: str, bucket: str | bytes, key: str | bytes, value: bytes, headers: Headers | None = None) -> str:
    """Store a value (text/plain unless headers say otherwise); returns the new vclock. The answer is 200,
    or 300 when the write leaves siblings."""
    status, got, body = call(
        "PUT", base + path(bucket, key) + "?returnbody=true", value, {"Content-Type": "text/plain", **(headers or {})}
    )
    assert status in (200, 300), (status, body)
    return lowered(got)["x-riak-vclock"]


def make_siblings(base: str, bucket: str, key: str) -> str:
    """Two writes with the same stale vclock: returns the vclock that covers both siblings."""
    stale = put(base, bucket, key, b"original")
    put(base, bucket, key, b"left", {"X-Riak-Vclock": stale})
    put(base, bucket, key, b"right", {"X-Riak-Vclock": stale})
    status, headers, _ = call("GET", base + path(bucket, key))
    assert status == 300
    return lowered(headers)["x-riak-vclock"]


def multipart_values(content_type: str, body: bytes) -> list[tuple[bytes, dict[str, str]]]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    parts = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        parts.append((payload, {name.lower(): str(value) for name, value in part.items()}))
    return parts


def json_stream(body: bytes) -> list[Any]:
    """The JSON objects of a streamed listing, written one after another."""
    decoder, text, out = json.JSONDecoder(), body.decode(), []
    position = 0
    while position < len(text):
        value, position = decoder.raw_decode(text, position)
        out.append(value)
    return out


# --- Resources -------------------------------------------------------------------------------------------


def test_the_root_lists_resources_as_json_to_clients_that_ask_and_as_html_otherwise(base: str) -> None:
    """GET / with Accept: application/json is Riak's resource map (clients discover paths from it), with
    the same links in a Link header; a browser, `*/*` or no Accept gets HTML; other methods get 405."""
    status, headers, body = call("GET", base + "/", headers={"Accept": "application/json"})
    assert status == 200 and lowered(headers)["content-type"].startswith("application/json")
    resources = json.loads(body)
    for name in (
        "riak_kv_wm_buckets",
        "riak_kv_wm_index",
        "riak_kv_wm_keylist",
        "riak_kv_wm_object",
        "riak_kv_wm_props",
    ):
        assert resources[name] == "/buckets"
    assert resources["riak_kv_wm_ping"] == "/ping" and resources["riak_kv_wm_stats"] == "/stats"
    assert resources["riak_kv_wm_preflist"] == "/buckets" and resources["riak_kv_wm_bucket_type"] == "/types"
    assert '</buckets>; rel="riak_kv_wm_buckets"' in lowered(headers)["link"]

    for accept in ("text/html", "*/*", None, "application/json;q=0.5, text/html"):
        status, headers, body = call("GET", base + "/", headers={"Accept": accept} if accept else {})
        assert status == 200 and lowered(headers)["content-type"].startswith("text/html"), accept
        assert b'<a href="/buckets">riak_kv_wm_buckets</a>' in body
    status, headers, _ = call("GET", base + "/", headers={"Accept": "text/html;q=0.2, application/json"})
    assert lowered(headers)["content-type"].startswith("application/json")
    status, headers, _ = call("POST", base + "/", b"")
    assert status == 405 and "GET" in lowered(headers)["allow"]


def test_ping_answers_exactly_ok_and_stats_carry_riak_version_ring_latency_repair_and_sibling_fields(
    cluster: LocalCluster, base: str
) -> None:
    """/ping is `OK` byte for byte (clients compare it); /stats is JSON with the fields Riak clients and
    operators read: version, node name, ring members, get/put latency percentiles, read repairs, hints
    pending and the siblings histogram."""
    status, _, body = call("GET", base + "/ping")
    assert (status, body) == (200, b"OK")
    assert call("HEAD", base + "/ping")[0] == 200
    put(base, "stats", "k", b"v")
    assert call("GET", base + path("stats", "k"))[0] == 200

    stats = http_json(base + "/stats")
    assert stats["riak_kv_version"] == "2.2.3" and stats["nodename"] == "node0"
    assert stats["ring_members"] == ["node0", "node1", "node2"]
    for kind in ("get", "put"):
        for name in ("mean", "median", "95", "99", "100"):
            value = stats[f"node_{kind}_fsm_time_{name}"]
            assert isinstance(value, int) and value >= 0, (kind, name)
        assert stats[f"node_{kind}_fsm_time_100"] > 0
    assert isinstance(stats["read_repairs"], int) and isinstance(stats["hints_pending"], int)
    assert isinstance(stats["siblings_histogram"], dict) and stats["siblings_histogram"].get("1", 0) >= 1


# --- Objects ---------------------------------------------------------------------------------------------


def test_an_object_round_trips_with_its_content_type_charset_metadata_etag_and_last_modified(base: str) -> None:
    """What a PUT gave (body, Content-Type with charset, X-Riak-Meta-*) comes back on GET with an ETag,
    Last-Modified, X-Riak-Vclock and a Link to the bucket; HEAD gives the same headers and no body."""
    value = json.dumps({"name": "Ada"}).encode()
    meta = {"X-Riak-Meta-Colour": "blue", "X-Riak-Meta-Owner": "ada lovelace"}
    put(base, "roundtrip", "doc", value, {"Content-Type": "application/json; charset=utf-8", **meta})

    status, raw_headers, body = call("GET", base + path("roundtrip", "doc"))
    headers = lowered(raw_headers)
    assert (status, body) == (200, value)
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert (headers["x-riak-meta-colour"], headers["x-riak-meta-owner"]) == ("blue", "ada lovelace")
    assert headers["etag"].startswith('"') and headers["etag"].endswith('"') and len(headers["etag"]) > 2
    assert headers["link"] == '</buckets/roundtrip>; rel="up"'
    assert headers["x-riak-vclock"]
    modified = email.utils.parsedate_to_datetime(headers["last-modified"]).timestamp()
    assert abs(modified - time.time()) < 120

    status, head_headers, head_body = call("HEAD", base + path("roundtrip", "doc"))
    assert (status, head_body) == (200, b"")
    assert lowered(head_headers)["etag"] == headers["etag"]
    assert lowered(head_headers)["content-length"] == str(len(value))


def test_a_content_encoded_body_is_stored_and_served_as_sent(base: str) -> None:
    """As in Riak, Content-Encoding labels the stored bytes: a gzip body is kept compressed and served
    with its encoding, and bytes that are not valid gzip are stored all the same (nothing decodes them)."""
    compressed = gzip.compress(b"a value that travels compressed")
    headers = {"Content-Type": "text/plain", "Content-Encoding": "gzip"}
    assert call("PUT", base + path("encoded", "gz"), compressed, headers)[0] == 204
    status, raw, body = call("GET", base + path("encoded", "gz"))
    assert (status, body, lowered(raw)["content-encoding"]) == (200, compressed, "gzip")
    assert gzip.decompress(body) == b"a value that travels compressed"

    assert call("PUT", base + path("encoded", "not-gzip"), b"plain", headers)[0] == 204
    assert call("GET", base + path("encoded", "not-gzip"))[:3:2] == (200, b"plain")


def test_conditional_gets_answer_304_when_the_client_has_the_current_version(base: str) -> None:
    """If-None-Match with the current ETag (or `*`) and If-Modified-Since at Last-Modified give 304 with
    the validators; a different ETag or an older date give the object; a failed If-Match gives 412."""
    put(base, "conditional", "doc", b"v1")
    _, raw, _ = call("GET", base + path("conditional", "doc"))
    etag, modified = lowered(raw)["etag"], lowered(raw)["last-modified"]
    url = base + path("conditional", "doc")

    for unchanged in ({"If-None-Match": etag}, {"If-None-Match": '"other", ' + etag}, {"If-None-Match": "*"}):
        status, headers, body = call("GET", url, headers=unchanged)
        assert (status, body) == (304, b""), unchanged
        assert lowered(headers)["etag"] == etag and lowered(headers)["x-riak-vclock"]
    assert call("GET", url, headers={"If-Modified-Since": modified})[0] == 304
    assert call("GET", url, headers={"If-Modified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"})[0] == 200
    assert call("GET", url, headers={"If-None-Match": '"other"'})[:3:2] == (200, b"v1")
    assert call("GET", url, headers={"If-Match": '"other"'})[0] == 412
    assert call("GET", url, headers={"If-Match": etag})[0] == 200


def test_post_to_a_bucket_chooses_a_key_and_answers_201_with_its_location_in_the_form_used(base: str) -> None:
    """POST /buckets/B/keys stores under a server-chosen key: 201 with Location (and with returnbody the
    object); legacy POST /riak/B and typed POST /types/default/buckets/B/keys answer in their own form."""
    status, raw, body = call("POST", base + "/buckets/created/keys", b"one", {"Content-Type": "text/plain"})
    location = lowered(raw)["location"]
    assert status == 201 and location.startswith("/buckets/created/keys/") and body == b""
    assert call("GET", base + location)[:3:2] == (200, b"one")

    status, raw, body = call("POST", base + "/buckets/created/keys?returnbody=true", b"two", {"Content-Type": "a/b"})
    headers = lowered(raw)
    assert (status, body, headers["content-type"]) == (201, b"two", "a/b")
    assert headers["location"].startswith("/buckets/created/keys/") and headers["x-riak-vclock"] and headers["etag"]

    status, raw, _ = call("POST", base + "/riak/created", b"three", {"Content-Type": "application/json"})
    location = lowered(raw)["location"]
    assert status == 201 and location.startswith("/riak/created/")
    key = location.rsplit("/", 1)[1]
    assert call("GET", base + location)[:3:2] == (200, b"three")
    assert call("GET", base + path("created", key))[:3:2] == (200, b"three")

    status, raw, _ = call("POST", base + "/types/default/buckets/created/keys", b"four", {"Content-Type": "a/b"})
    location = lowered(raw)["location"]
    assert status == 201 and location.startswith("/types/default/buckets/created/keys/")
    assert call("GET", base + location)[:3:2] == (200, b"four")


def test_returnbody_answers_200_with_the_object_or_300_with_every_sibling(base: str) -> None:
    """PUT ?returnbody=true answers 200 with the stored object; when the write leaves siblings it answers
    300: a multipart/mixed body of every sibling to a client that accepts it, else the vtag list."""
    status, raw, body = call(
        "PUT", base + path("returnbody", "k") + "?returnbody=true", b"first", {"Content-Type": "text/plain"}
    )
    headers = lowered(raw)
    assert (status, body, headers["content-type"]) == (200, b"first", "text/plain")
    stale = headers["x-riak-vclock"]
    put(base, "returnbody", "k", b"second", {"X-Riak-Vclock": stale})

    status, raw, body = call(
        "PUT",
        base + path("returnbody", "k") + "?returnbody=true",
        b"third",
        {"Content-Type": "text/plain", "X-Riak-Vclock": stale, "Accept": "multipart/mixed, */*;q=0.5"},
    )
    headers = lowered(raw)
    assert status == 300 and headers["content-type"].startswith("multipart/mixed; boundary=")
    assert sorted(v for v, _ in multipart_values(headers["content-type"], body)) == [b"second", b"third"]
    assert headers["x-riak-vclock"]

    status, raw, body = call(
        "PUT", base + path("returnbody", "k") + "?returnbody=true", b"fourth", {"X-Riak-Vclock": stale}
    )
    assert status == 300 and body.startswith(b"Siblings:\n") and len(body.split()) == 4


def test_siblings_are_listed_by_vtag_served_as_multipart_and_one_is_chosen_with_vtag(base: str) -> None:
    """A GET of a key with siblings is 300: with `Accept: */*` the vtag list, with multipart/mixed every
    sibling with its ETag and metadata; ?vtag=V serves that sibling alone, an unknown vtag is 404."""
    make_siblings(base, "siblings", "k")
    status, _, listing = call("GET", base + path("siblings", "k"), headers={"Accept": "*/*"})
    vtags = listing.decode().split()[1:]
    assert status == 300 and listing.startswith(b"Siblings:\n") and len(vtags) == 2

    status, raw, body = call("GET", base + path("siblings", "k"), headers={"Accept": "multipart/mixed"})
    parts = multipart_values(lowered(raw)["content-type"], body)
    assert status == 300 and sorted(value for value, _ in parts) == [b"left", b"right"]
    by_vtag = {headers["etag"].strip('"'): value for value, headers in parts}
    assert sorted(by_vtag) == sorted(vtags)
    assert all(headers["content-type"] == "text/plain" and "last-modified" in headers for _, headers in parts)

    for vtag, value in by_vtag.items():
        status, raw, body = call("GET", base + path("siblings", "k") + "?vtag=" + vtag)
        assert (status, body, lowered(raw)["etag"]) == (200, value, f'"{vtag}"')
    assert call("GET", base + path("siblings", "k") + "?vtag=nosuchvtag")[0] == 404


def test_a_write_with_the_merged_vclock_resolves_siblings(base: str) -> None:
    """Writing with the vclock of a 300 replaces every sibling it covers: one value remains."""
    merged = make_siblings(base, "resolve", "k")
    put(base, "resolve", "k", b"merged", {"X-Riak-Vclock": merged})
    status, _, body = call("GET", base + path("resolve", "k"), headers={"Accept": "multipart/mixed"})
    assert (status, body) == (200, b"merged")


def test_delete_answers_204_then_404_with_the_tombstone_vclock_and_a_write_with_it_revives_cleanly(
    base: str,
) -> None:
    """DELETE of a present key is 204; a GET after it is 404 with X-Riak-Vclock and X-Riak-Deleted; a
    second DELETE, like a DELETE of a key never written, is 404; a PUT with the tombstone's vclock leaves
    one value, not a sibling of the delete."""
    put(base, "deleted", "k", b"v")
    assert call("DELETE", base + path("deleted", "k"))[0] == 204
    status, raw, _ = call("GET", base + path("deleted", "k"))
    headers = lowered(raw)
    assert status == 404 and headers["x-riak-deleted"] == "true" and headers["x-riak-vclock"]
    assert call("DELETE", base + path("deleted", "k"))[0] == 404
    assert call("DELETE", base + path("deleted", "never-written"))[0] == 404

    put(base, "deleted", "k", b"again", {"X-Riak-Vclock": headers["x-riak-vclock"]})
    assert call("GET", base + path("deleted", "k"))[:3:2] == (200, b"again")


# --- Buckets -------------------------------------------------------------------------------------------


def test_bucket_props_are_read_changed_everywhere_refused_when_bad_and_reset(cluster: LocalCluster) -> None:
    """GET /buckets/B/props shows the defaults; a PUT changes them on every node (rw included); malformed
    or invalid props get 400 and change nothing; DELETE resets every prop, including ones set long ago."""
    base, last = cluster[0].url, cluster[2].url
    url = "/buckets/props/props"
    props = http_json(base + url)["props"]
    assert props["name"] == "props"
    assert {k: props[k] for k in ("n_val", "allow_mult", "last_write_wins", "r", "w", "rw")} == {
        "n_val": 3,
        "allow_mult": True,
        "last_write_wins": False,
        "r": "quorum",
        "w": "quorum",
        "rw": "quorum",
    }
    change = json.dumps({"props": {"n_val": 2, "allow_mult": False, "pw": 1, "rw": 1}}).encode()
    assert call("PUT", base + url, change, {"Content-Type": "application/json"})[0] == 204
    cluster.wait(lambda: http_json(last + url)["props"]["n_val"] == 2, 10, "the props change to spread")
    changed = http_json(last + url)["props"]
    assert (changed["allow_mult"], changed["pw"], changed["rw"]) == (False, 1, 1)

    for bad in (
        b"not json",
        b"[1, 2]",
        b'{"props": 3}',
        b'{"props": {"n_val": "three"}}',
        b'{"props": {"n_val": 99}}',
        b'{"props": {"r": [1]}}',
        b'{"props": {"w": "\\u00b2"}}',
        b'{"props": {"allow_mult": "yes"}}',
        b'{"props": {"rw": 3}}',
        b'{"props": {"rw": 0}}',
        b'{"props": {"rw": "most"}}',
        b'{"props": {"no_such_prop": 1}}',
        b"[" * 100_000,
    ):
        status, _, body = call("PUT", base + url, bad, {"Content-Type": "application/json"})
        assert status == 400 and body.strip(), bad[:40]
    assert http_json(base + url)["props"] == http_json(last + url)["props"] == changed

    assert call("DELETE", base + url)[0] == 204
    cluster.wait(lambda: http_json(last + url)["props"]["n_val"] == 3, 10, "the props reset to spread")
    reset = http_json(last + url)["props"]
    assert (reset["allow_mult"], reset["pw"], reset["rw"]) == (True, 0, "quorum")


def test_speculative_retry_is_a_prop_shown_set_everywhere_refused_when_bad_and_counted(cluster: LocalCluster) -> None:
    """speculative_retry shows as none; set to 50ms on one node, every node shows it and its reads hold
    the third replica back (counted in /stats and /metrics); a value that is no policy is a 400 naming
    the accepted forms, and the props stay as they were."""
    base, last = cluster[0].url, cluster[2].url
    url = "/buckets/speculative/props"
    assert http_json(base + url)["props"]["speculative_retry"] == "none"
    change = json.dumps({"props": {"speculative_retry": "50ms"}}).encode()
    assert call("PUT", base + url, change, {"Content-Type": "application/json"})[0] == 204
    cluster.wait(lambda: http_json(last + url)["props"]["speculative_retry"] == "50ms", 10, "the change to spread")
    before = http_json(last + url)["props"]
    for bad in ('"always"', '"100p"', '"0ms"', '"soon"', "20", "null", "true"):
        body = b'{"props": {"speculative_retry": %s}}' % bad.encode()
        status, _, answer = call("PUT", base + url, body, {"Content-Type": "application/json"})
        assert status == 400 and b"speculative_retry must be none, a percentile" in answer, (bad, status, answer)
    assert http_json(base + url)["props"] == http_json(last + url)["props"] == before

    put(base, "speculative", "k", b"v")
    held = http_json(base + "/stats")["speculative_reads_total"]
    for _ in range(5):
        status, _, body = call("GET", base + path("speculative", "k"))
        assert (status, body) == (200, b"v")
    stats = http_json(base + "/stats")
    assert stats["speculative_reads_total"] >= held + 5, stats
    assert set(stats["speculative_sends_by_reason"]) == {"timer", "notfound", "failure"}
    status, _, metrics = call("GET", base + "/metrics")
    assert status == 200
    assert b'dynastore_speculative_sends_total{reason="timer"}' in metrics
    assert b"dynastore_speculative_reads_total " in metrics


def test_blind_writes_to_an_allow_mult_false_bucket_never_reach_the_sibling_limit(cluster: LocalCluster) -> None:
    """With allow_mult=false, 150 writes without a vclock through every node (siblings_max is 100) all
    get 200 with one value, and every node then reads the last one: no hidden siblings pile up."""
    urls = [cluster[i].url for i in range(3)]
    props = json.dumps({"props": {"allow_mult": False}}).encode()
    assert call("PUT", urls[0] + "/buckets/onevalue/props", props, {"Content-Type": "application/json"})[0] == 204

    def spread() -> bool:
        return all(http_json(url + "/buckets/onevalue/props")["props"]["allow_mult"] is False for url in urls)

    cluster.wait(spread, 10, "the props change to spread")
    for i in range(150):
        target = urls[i % 3] + path("onevalue", "k") + "?returnbody=true"
        status, _, body = call("PUT", target, b"v%03d" % i, {"Content-Type": "text/plain"})
        assert (status, body) == (200, b"v%03d" % i)
    for url in urls:
        assert call("GET", url + path("onevalue", "k"))[:3:2] == (200, b"v149")


def test_keys_and_buckets_are_listed_whole_or_streamed(base: str) -> None:
    """?keys=true lists a bucket's keys, ?keys=stream the same as a stream of {"keys": [...]} objects
    ending with an empty one; /buckets?buckets=true lists buckets; the legacy form adds the props."""
    names = ["a", "b c", "d/e"]
    for name in names:
        put(base, "listing", name, b"v")
    status, _, body = call("GET", base + "/buckets/listing/keys?keys=true")
    assert status == 200 and sorted(json.loads(body)["keys"]) == names
    status, _, body = call("GET", base + "/buckets/listing/keys?keys=stream")
    chunks = json_stream(body)
    assert status == 200 and chunks[-1] == {"keys": []}
    assert sorted(key for chunk in chunks for key in chunk["keys"]) == names
    assert json.loads(call("GET", base + "/buckets/listing/keys")[2]) == {}

    status, _, body = call("GET", base + "/buckets?buckets=true")
    assert status == 200 and "listing" in json.loads(body)["buckets"]
    assert call("GET", base + "/buckets")[0] == 400

    legacy = json.loads(call("GET", base + "/riak/listing?keys=true")[2])
    assert sorted(legacy["keys"]) == names and legacy["props"]["name"] == "listing"
    assert "props" not in json.loads(call("GET", base + "/riak/listing?keys=true&props=false")[2])


def test_the_preflist_names_the_partition_node_and_primacy_of_each_replica(cluster: LocalCluster) -> None:
    """GET /buckets/B/keys/K/preflist is {"preflist": [{"partition", "node", "primary"}, ...]}: N entries
    on N distinct nodes, the same from every node."""
    answers = []
    for node in cluster.nodes:
        status, _, body = call("GET", node.url + path("preflist", "k") + "/preflist")
        assert status == 200
        answers.append(json.loads(body))
    assert answers[0] == answers[1] == answers[2]
    entries = answers[0]["preflist"]
    assert [sorted(entry) for entry in entries] == [["node", "partition", "primary"]] * 3
    assert sorted(entry["node"] for entry in entries) == ["node0", "node1", "node2"]
    assert all(entry["primary"] is True and isinstance(entry["partition"], int) for entry in entries)


# --- Names and paths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["a/b", "with space", "plus+sign", "ünïcödé ☃", b"\x00\xff\xfe/%", ".", "..", "%41 not an escape", "k" * 4096],
    ids=["slash", "space", "plus", "unicode", "bytes", "dot", "dotdot", "percent", "longest"],
)
def test_a_key_of_any_bytes_round_trips_percent_encoded(base: str, key: str | bytes) -> None:
    """Bucket and key segments are percent-decoded to bytes, so any key (slash, space, plus, unicode,
    arbitrary bytes, dot segments, the longest allowed) is stored and served under exactly itself."""
    bucket = "names ü/" + (key if isinstance(key, str) else "bytes")[:20]
    put(base, bucket, key, b"value of " + (key.encode() if isinstance(key, str) else key)[:40])
    status, _, body = call("GET", base + path(bucket, key))
    assert status == 200 and body.startswith(b"value of ")
    status, _, body = call("GET", base + path(bucket) + "/keys?keys=true")
    expected = key if isinstance(key, str) else key.decode(errors="replace")
    assert json.loads(body)["keys"] == [expected]


def test_a_plus_in_a_path_is_a_space_as_riak_decodes_it_and_an_escaped_plus_is_a_plus(base: str) -> None:
    """Riak decodes `+` in a path segment as a space (clients escape names with quote_plus), so `a+b` and
    `a%20b` name the same key while `a%2Bb` names another."""
    call("PUT", base + "/buckets/plus/keys/a+b", b"spaced", {"Content-Type": "text/plain"})
    call("PUT", base + "/buckets/plus/keys/a%2Bb", b"plussed", {"Content-Type": "text/plain"})
    assert call("GET", base + "/buckets/plus/keys/a%20b")[:3:2] == (200, b"spaced")
    assert call("GET", base + "/buckets/plus/keys/a%2bb")[:3:2] == (200, b"plussed")
    assert sorted(json.loads(call("GET", base + "/buckets/plus/keys?keys=true")[2])["keys"]) == ["a b", "a+b"]


def test_legacy_and_typed_paths_serve_the_same_objects_and_other_bucket_types_are_404(base: str) -> None:
    """/riak/B/K and /types/default/buckets/B/keys/K are the object at /buckets/B/keys/K (legacy answers
    link to /riak/B); a bucket type other than default does not exist: 404, and nothing is stored."""
    headers = {"Content-Type": "text/plain"}
    assert call("PUT", base + "/riak/paths/legacy", b"from legacy", headers)[0] == 204
    assert call("GET", base + path("paths", "legacy"))[:3:2] == (200, b"from legacy")
    status, raw, _ = call("GET", base + "/riak/paths/legacy")
    assert status == 200 and lowered(raw)["link"] == '</riak/paths>; rel="up"'
    assert call("PUT", base + path("paths", "typed", prefix="/types/default/buckets"), b"from typed", headers)[0] == 204
    assert call("GET", base + "/riak/paths/typed")[:3:2] == (200, b"from typed")
    assert call("DELETE", base + "/riak/paths/typed")[0] == 204
    assert call("GET", base + path("paths", "typed"))[0] == 404

    assert call("PUT", base + path("paths", "other", prefix="/types/maps/buckets"), b"x", headers)[0] == 404
    assert call("GET", base + path("paths", "other", prefix="/types/maps/buckets"))[0] == 404
    assert call("GET", base + path("paths", "other"))[0] == 404


# --- Bad input ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    """A request that must be refused with `status`; `{obj}`, `{bucket}` and `{key}` name the object
    under test, `{other_vclock}` a valid vclock of another key."""

    what: str
    method: str
    target: str
    status: int
    headers: Headers = field(default_factory=dict)
    body: bytes = b"changed"


BAD_INPUT = [
    Bad("unparsable vclock", "PUT", "{obj}", 400, {"X-Riak-Vclock": "not a vclock!"}),
    Bad("base64 that is not a vclock", "PUT", "{obj}", 400, {"X-Riak-Vclock": base64.b64encode(b"\x01" * 20).decode()}),
    Bad("vclock of another key", "PUT", "{obj}", 400, {"X-Riak-Vclock": "{other_vclock}"}),
    Bad("vclock on delete", "DELETE", "{obj}", 400, {"X-Riak-Vclock": "%%%"}),
    Bad("w above n_val", "PUT", "{obj}?w=4", 400),
    Bad("dw above n_val", "PUT", "{obj}?dw=4", 400),
    Bad("pw above n_val", "PUT", "{obj}?pw=4", 400),
    Bad("r above n_val", "GET", "{obj}?r=4", 400),
    Bad("rw above n_val", "DELETE", "{obj}?rw=4", 400),
    Bad("w above n_val on delete", "DELETE", "{obj}?w=4", 400),
    Bad("words that are not quorums", "PUT", "{obj}?w=lots", 400),
    Bad("negative r", "GET", "{obj}?r=-1", 400),
    Bad("fractional pr", "GET", "{obj}?pr=1.5", 400),
    Bad("a digit that is not ASCII", "PUT", "{obj}?dw=%C2%B2", 400),
    Bad("a quorum no operation uses", "PUT", "{obj}?rw=many", 400),
    Bad("zero timeout", "GET", "{obj}?timeout=0", 400),
    Bad("timeout in words", "PUT", "{obj}?timeout=soon", 400),
    Bad("returnbody neither true nor false", "PUT", "{obj}?returnbody=maybe", 400),
    Bad("object over the 1 MiB limit", "PUT", "{obj}", 413, body=b"x" * (1024 * 1024 + 1)),
    Bad("media type without a subtype", "PUT", "{obj}", 415, {"Content-Type": "nonsense"}),
    Bad("user metadata that is not UTF-8", "PUT", "{obj}", 400, {"X-Riak-Meta-Colour": b"\xff\xfe"}),
    Bad("content type that is not UTF-8", "PUT", "{obj}", 415, {"Content-Type": b"text/\xff"}),
    Bad("secondary index without a type suffix", "PUT", "{obj}", 400, {"X-Riak-Index-Email": "ada@example.com"}),
    Bad("an _int index term that is no integer", "PUT", "{obj}", 400, {"X-Riak-Index-age_int": "old"}),
    Bad("an index term that is not UTF-8", "PUT", "{obj}", 400, {"X-Riak-Index-a_bin": b"\xff\xfe"}),
    Bad("a Link header that names no object", "PUT", "{obj}", 400, {"Link": '</ping>; riaktag="t"'}),
    Bad("a Link header that is not links", "PUT", "{obj}", 400, {"Link": "nonsense"}),
    Bad("store if absent, but present", "PUT", "{obj}", 412, {"If-None-Match": "*"}),
    Bad("store if unchanged, but changed", "PUT", "{obj}", 412, {"If-Match": '"stale"'}),
    Bad("delete if unchanged, but changed", "DELETE", "{obj}", 412, {"If-Match": '"stale"'}),
    Bad("key over the length limit", "PUT", "/buckets/{bucket}/keys/" + "k" * 4097, 400),
    Bad("PATCH of an object", "PATCH", "{obj}", 405),
    Bad("PUT of a preflist", "PUT", "{obj}/preflist", 405),
    Bad("DELETE of a key listing", "DELETE", "/buckets/{bucket}/keys", 405),
    Bad("POST to ping", "POST", "/ping", 405),
    Bad("PUT to stats", "PUT", "/stats", 405),
    Bad("unknown route", "PUT", "/nothing/here", 404),
    Bad("below an object", "PUT", "{obj}/extra/more", 404),
    Bad("a bucket alone", "PUT", "/buckets/{bucket}", 404),
    Bad("a bucket type that does not exist", "PUT", "/types/maps/buckets/{bucket}/keys/{key}", 404),
]


@pytest.mark.parametrize("bad", BAD_INPUT, ids=[bad.what for bad in BAD_INPUT])
def test_bad_input_is_refused_with_a_4xx_and_a_reason_and_changes_nothing(base: str, bad: Bad) -> None:
    """Each malformed or unacceptable request gets its 4xx (400, 404, 405, 412, 413 or 415) with a
    plain-text reason, never a 5xx, and the object it aimed at is exactly as before."""
    bucket, key = "bad-input", bad.what.replace(" ", "-")
    put(base, bucket, key, b"original")
    other_vclock = put(base, bucket, key + "-other", b"other")
    _, before, _ = call("GET", base + path(bucket, key))

    names = {"obj": path(bucket, key), "bucket": quote(bucket, safe=""), "key": quote(key, safe="")}
    headers = {"Content-Type": "text/plain"}
    for name, value in bad.headers.items():
        headers[name] = value.replace("{other_vclock}", other_vclock) if isinstance(value, str) else value
    status, raw, reason = call(bad.method, base + bad.target.format(**names), bad.body, headers)
    assert status == bad.status, reason
    assert lowered(raw)["content-type"].startswith("text/plain") and reason.strip()
    if status == 405:
        assert lowered(raw)["allow"]

    status, after, body = call("GET", base + path(bucket, key))
    assert (status, body) == (200, b"original")
    assert lowered(after)["etag"] == lowered(before)["etag"]


# --- Random requests ---------------------------------------------------------------------------------------

WORDS = ["buckets", "keys", "props", "preflist", "types", "default", "riak", "ping", "stats", "ring", "fz", "k"]
LATIN1 = st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f")
TOKEN = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789-_", max_size=8)
segments = st.one_of(
    st.sampled_from(WORDS),
    st.text(max_size=10).map(lambda text: quote(text, safe="")),
    st.binary(max_size=6).map(lambda raw: quote(raw, safe="")),
    st.text(alphabet="%0123456789abcdefxyzXYZ+-._~!$&'()*,;=:@", max_size=8),
)


def routes_to_admin(target: str) -> bool:
    # /admin is not part of Riak's API and can change membership (leave, join): never send it random input.
    first = target.strip("/").split("/")[0]
    return unquote_to_bytes(first.replace("+", " ")) == b"admin"


random_paths = st.lists(segments, max_size=6).map(lambda parts: "/" + "/".join(parts))
# Most requests take the shape of a real resource, so that they get past routing to the handlers; names
# come from a few fuzz-only buckets and keys (so requests meet each other's objects and props) or junk.
ROUTES = (
    "/buckets/{0}/keys/{1}",
    "/buckets/{0}/keys",
    "/buckets/{0}/props",
    "/buckets/{0}/keys/{1}/preflist",
    "/buckets",
    "/types/{2}/buckets/{0}/keys/{1}",
    "/types/{2}/buckets/{0}/props",
    "/riak/{0}/{1}",
    "/riak/{0}",
    "/riak",
    "/",
    "/ping",
    "/stats",
    "/ring",
)
names = st.one_of(st.sampled_from(["fz", "fz2", "k", "k+2"]), segments)
api_paths = st.builds(
    lambda route, bucket, key, kind: route.format(bucket, key, kind),
    st.sampled_from(ROUTES),
    names,
    names,
    st.one_of(st.just("default"), segments),
)
paths = st.one_of(api_paths, api_paths, api_paths, random_paths).filter(lambda p: not routes_to_admin(p))
query_values = st.one_of(
    st.sampled_from(["1", "2", "3", "4", "0", "one", "quorum", "all", "default", "true", "false", "stream", "-1"]),
    st.sampled_from(["²", "1.5", "", " 2", "99999999999", "%", "\x00"]),
    st.text(max_size=10),
)
queries = st.lists(
    st.tuples(
        st.sampled_from(
            ["r", "w", "pr", "pw", "dw", "rw", "returnbody", "timeout", "keys", "buckets", "vtag", "props"]
        ),
        query_values,
    ),
    max_size=4,
).map(urlencode)
header_text = st.text(alphabet=LATIN1, max_size=24)
json_values = st.one_of(
    st.integers(-3, 9), st.booleans(), st.none(), st.sampled_from(["quorum", "all", "one", "default", "²", "x"])
)
bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=64),
    st.dictionaries(
        st.sampled_from(["n_val", "r", "w", "pr", "pw", "dw", "rw", "allow_mult", "last_write_wins", "name", "bad"]),
        st.one_of(json_values, st.lists(json_values, max_size=2)),
        max_size=3,
    ).map(lambda props: json.dumps({"props": props}).encode()),
)
header_sets = st.fixed_dictionaries(
    {},
    optional={
        "X-Riak-Vclock": st.one_of(header_text, st.binary(max_size=48).map(lambda raw: base64.b64encode(raw).decode())),
        "Content-Type": st.one_of(
            st.sampled_from(["text/plain", "application/json; charset=utf-8", 'a/b; charset=""', "nonsense", ";"]),
            header_text,
        ),
        "Accept": st.one_of(
            st.sampled_from(["*/*", "multipart/mixed", "application/json;q=x", "text/html;q=2"]), header_text
        ),
        "If-None-Match": st.one_of(st.just("*"), header_text),
        "If-Match": header_text,
        "If-Modified-Since": st.one_of(st.just("Sat, 01 Jan 2000 00:00:00 GMT"), header_text),
        "X-Riak-Meta-Colour": header_text,
        "Content-Encoding": header_text,
    },
)
metas = st.dictionaries(TOKEN.map(lambda name: "X-Riak-Meta-" + name), header_text, max_size=2)
methods = st.sampled_from(["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "FOO"])


def test_random_requests_never_get_a_5xx_but_a_plain_503_and_every_node_keeps_serving(cluster: LocalCluster) -> None:
    """Random methods, paths (API words, junk, percent-escapes), quorum/timeout/listing parameters and
    headers (vclocks, content types, metadata, conditionals) never get a 5xx except a 503 with a
    plain-text reason; afterwards every node pings, stores and reads back, and no log has an internal error."""

    @settings(
        max_examples=200,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(
        node=st.sampled_from(range(len(cluster.nodes))),
        method=methods,
        target=paths,
        query=queries,
        headers=header_sets,
        meta=metas,
        body=bodies,
    )
    def one_request(
        node: int, method: str, target: str, query: str, headers: Headers, meta: Headers, body: bytes
    ) -> None:
        status, raw, reason = call(
            method, cluster[node].url + target + ("?" + query if query else ""), body, {**headers, **meta}
        )
        if status >= 500:
            assert status == 503, (status, reason)
            assert lowered(raw).get("content-type", "").startswith("text/plain")
            assert reason.strip() or method == "HEAD"

    one_request()
    for node in cluster.nodes:
        assert call("GET", node.url + "/ping")[:3:2] == (200, b"OK")
        put(node.url, "after-random-requests", node.name, node.name.encode())
        assert call("GET", node.url + path("after-random-requests", node.name))[:3:2] == (200, node.name.encode())
        assert "internal error" not in Path(node.log_path).read_text(errors="replace")


def test_every_response_names_the_ring_epoch_and_the_ring_describes_transitions_and_bucket_n_vals(base: str) -> None:
    """Partition-aware clients learn from any response whether their ring is stale (X-Dynastore-Ring),
    and /ring gives them the whole routing state: owners, next owners, finished transfers, bucket n_vals."""
    status, headers, _ = call("GET", base + "/ping")
    assert status == 200 and headers.get("X-Dynastore-Ring", "").count(".") == 1
    status, headers, _ = call("GET", base + "/buckets/b/keys/never-written")
    assert status == 404 and "X-Dynastore-Ring" in headers
    ring = http_json(base + "/ring")
    assert ring["epoch"] == headers["X-Dynastore-Ring"]
    assert ring["next_owners"] is None and ring["done"] == []
    assert isinstance(ring["bucket_n_vals"], dict)
