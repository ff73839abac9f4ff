"""Riak's Protocol Buffers API on real node processes, spoken to by a small client of our own
(pb_util.py): KV with siblings and Riak's preconditions, objects shared with the HTTP API, streamed
listing, bucket and type properties, counters and data types, bad frames that change nothing, the
connection limit, and security (AuthReq before anything, permissions as over HTTP, TLS by StartTls)."""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from cluster_settings import FAST
from http_util import call, obj
from pb_util import PbClient

from dynastore.api.pb import schema
from dynastore.bench.ycsb_targets import DYNASTORE_PB, Endpoint, open_target
from dynastore.client.http import HttpClient
from dynastore.client.pb import PbClient as AsyncPbClient
from dynastore.localcluster import LocalCluster

MakeCluster = Callable[..., LocalCluster]
QUORUM = 0xFFFFFFFD
ALL = 0xFFFFFFFC


def pb(cluster: LocalCluster, i: int = 0) -> PbClient:
    node = cluster[i]
    return PbClient(node.host, node.pb_port)


def eventually(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def operator(url: str, path: str, params: dict[str, str] | None = None, body: object = None) -> None:
    """An operator's POST from this machine (allowed without a proof while security is off), as the
    CLI sends it: what `dynastore bucket-type` and `dynastore security` do, without a process each."""
    target = path + ("?" + urlencode(params) if params else "")
    data = None if body is None else json.dumps(body).encode()
    status, _, answer = call("POST", url + target, data, {"Content-Type": "application/json"})
    assert 200 <= status < 300, (target, status, answer)


def secure(cluster: LocalCluster, user: str, permission: str, scope: str) -> None:
    """Adds `user` (password pw-USER) with one grant, then turns security on."""
    url = cluster[0].url
    operator(url, "/admin/security/users", {"name": user}, {"password": f"pw-{user}"})
    operator(url, "/admin/security/grant", {"permissions": permission, "on": scope, "user": user})
    operator(url, "/admin/security/enable")
    cluster.set_secure(True)


def content(value: bytes, **fields: object) -> dict[str, object]:
    return {"value": value, "content_type": b"text/plain", **fields}


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One 3-node cluster for the KV, listing/props/data-type and 2i tests (their buckets differ), so
    the suite starts it once; pages of 5 keys and of 3 index results so that a listing and a streamed
    index query take several frames."""
    overrides = (*FAST, "list_page_keys_max=5", "index_page_results_max=3")
    cluster = LocalCluster(tmp_path_factory.mktemp("pb3"), 3, overrides=overrides)
    try:
        cluster.start()
        cluster.wait_ready(60)
        yield cluster
    except BaseException:
        print(cluster.logs(60))
        raise
    finally:
        cluster.close()


def test_kv_over_pb_keeps_siblings_preconditions_and_metadata_and_shares_objects_with_http(
    three: LocalCluster,
) -> None:
    """On 3 nodes: store with metadata and return_body, fetch at another node with r=all; two writes
    without a vclock become siblings, a write with the vclock resolves them; if_none_match and a stale
    if_not_modified are refused with Riak's reasons and change nothing; head leaves the value out;
    if_modified answers unchanged; a server-chosen key; an object written over PB reads over HTTP with
    its metadata and one written over HTTP reads over PB; delete, then the tombstone's vclock."""
    cluster = three
    with pb(cluster, 0) as a, pb(cluster, 1) as b:
        meta = [{"key": b"Source", "value": b"pb"}]
        put = a.expect(
            "RpbPutResp",
            "RpbPutReq",
            bucket=b"kv",
            key=b"k 1",
            content=content(b"v1", usermeta=meta),
            return_body=True,
            w=QUORUM,
        )
        assert [c.value for c in put.content] == [b"v1"] and put.vclock
        got = b.expect("RpbGetResp", "RpbGetReq", bucket=b"kv", key=b"k 1", r=ALL)
        (one,) = got.content
        assert (one.value, one.content_type, one.vtag) == (b"v1", b"text/plain", put.content[0].vtag)
        assert [(p.key, p.value) for p in one.usermeta] == [(b"source", b"pb")]
        assert one.last_mod > 1_600_000_000
        status, headers, body = call("GET", obj(cluster[2].url, "kv", "k 1"))
        assert (status, body, headers["X-Riak-Meta-source"]) == (200, b"v1", "pb")

        # Siblings: two writes from the same stale context.
        a.expect("RpbPutResp", "RpbPutReq", bucket=b"kv", key=b"sib", content=content(b"x"))
        a.expect("RpbPutResp", "RpbPutReq", bucket=b"kv", key=b"sib", content=content(b"y"))
        both = b.expect("RpbGetResp", "RpbGetReq", bucket=b"kv", key=b"sib", r=ALL)
        assert sorted(c.value for c in both.content) == [b"x", b"y"]
        assert b.error("RpbPutReq", bucket=b"kv", key=b"sib", content=content(b"z"), if_none_match=True) == (
            "match_found"
        )
        stale = a.expect("RpbGetResp", "RpbGetReq", bucket=b"kv", key=b"k 1").vclock
        a.expect("RpbPutResp", "RpbPutReq", bucket=b"kv", key=b"k 1", content=content(b"v2"), vclock=stale)
        assert (
            a.error("RpbPutReq", bucket=b"kv", key=b"k 1", content=content(b"v3"), vclock=stale, if_not_modified=True)
            == "modified"
        )
        resolved = a.expect(
            "RpbPutResp",
            "RpbPutReq",
            bucket=b"kv",
            key=b"sib",
            content=content(b"xy"),
            vclock=both.vclock,
            return_head=True,
        )
        assert [c.value for c in resolved.content] == [b""]
        after = b.expect("RpbGetResp", "RpbGetReq", bucket=b"kv", key=b"sib", r=ALL)
        assert [c.value for c in after.content] == [b"xy"]
        assert [c.value for c in b.expect("RpbGetResp", "RpbGetReq", bucket=b"kv", key=b"k 1", r=ALL).content] == [
            b"v2"
        ]
        head = b.expect("RpbGetResp", "RpbGetReq", bucket=b"kv", key=b"sib", head=True)
        assert [c.value for c in head.content] == [b""] and head.content[0].vtag == after.content[0].vtag
        same = b.expect("RpbGetResp", "RpbGetReq", bucket=b"kv", key=b"sib", if_modified=after.vclock)
        assert same.unchanged and not same.content

        generated = a.expect("RpbPutResp", "RpbPutReq", bucket=b"kv", content=content(b"anon"))
        assert len(generated.key) == 32
        status, _, _ = call("PUT", obj(cluster[0].url, "kv", "from http"), b"h", {"Content-Type": "text/plain"})
        assert status == 204
        assert [c.value for c in a.expect("RpbGetResp", "RpbGetReq", bucket=b"kv", key=b"from http").content] == [b"h"]

        a.expect("RpbDelResp", "RpbDelReq", bucket=b"kv", key=b"sib", vclock=after.vclock)
        gone = b.expect("RpbGetResp", "RpbGetReq", bucket=b"kv", key=b"sib", r=ALL, deletedvclock=True)
        assert not gone.content and gone.vclock
        assert call("GET", obj(cluster[1].url, "kv", "sib"))[0] == 404
        a.expect("RpbDelResp", "RpbDelReq", bucket=b"kv", key=b"never there")
        assert "bad if_modified" in a.error("RpbGetReq", bucket=b"kv", key=b"x", if_modified=b"forged")


def test_listing_streams_pages_and_props_types_counters_and_data_types_work_over_pb(three: LocalCluster) -> None:
    """Key listing comes as several RpbListKeysResp frames (pages of list_page_keys_max) ending with
    done; buckets whole or streamed, per type; bucket props read as Riak encodes them, set and reset;
    an unsupported property is refused; type props; a legacy counter; a counter, set, map and hll by
    DtUpdate/DtFetch with contexts; a plain write to a data-type bucket is refused."""
    cluster = three
    url = cluster[0].url
    for name, props in (
        ("maps", {"datatype": "map"}),
        ("sets", {"datatype": "set"}),
        ("counts", {"datatype": "counter"}),
        ("hlls", {"datatype": "hll"}),
        ("plain", {}),
    ):
        operator(url, f"/admin/bucket-types/{name}", body={"props": props})
        operator(url, f"/admin/bucket-types/{name}/activate")

    def active_everywhere() -> bool:
        for node in cluster.nodes:
            for name in ("maps", "sets", "counts", "hlls", "plain"):
                status, _, body = call("GET", f"{node.url}/types/{name}/props")
                if status != 200 or not json.loads(body)["props"]["active"]:
                    return False
        return True

    eventually(active_everywhere)
    with pb(cluster, 0) as a, pb(cluster, 2) as c:
        for i in range(23):
            a.expect("RpbPutResp", "RpbPutReq", bucket=b"many", key=b"k%02d" % i, content=content(b"v"))
        a.send("RpbListKeysReq", bucket=b"many")
        frames = []
        while True:
            name, body = a.recv()
            assert name == "RpbListKeysResp"
            frames.append(list(body.keys))
            if body.done:
                break
        assert len(frames) >= 3
        assert sorted(k for page in frames for k in page) == [b"k%02d" % i for i in range(23)]
        assert b"many" in a.expect("RpbListBucketsResp", "RpbListBucketsReq").buckets
        a.send("RpbListBucketsReq", stream=True)
        streamed: list[bytes] = []
        while True:
            name, body = a.recv()
            streamed += body.buckets
            if body.done:
                break
        assert b"many" in streamed

        props = c.expect("RpbGetBucketResp", "RpbGetBucketReq", bucket=b"many").props
        assert (props.n_val, props.allow_mult, props.r, props.pr) == (3, True, QUORUM, 0)
        a.expect(
            "RpbSetBucketResp",
            "RpbSetBucketReq",
            bucket=b"many",
            props={"n_val": 2, "r": 0xFFFFFFFE, "notfound_ok": True},
        )
        eventually(lambda: c.expect("RpbGetBucketResp", "RpbGetBucketReq", bucket=b"many").props.n_val == 2)
        assert c.expect("RpbGetBucketResp", "RpbGetBucketReq", bucket=b"many").props.r == 0xFFFFFFFE
        eventually(lambda: json.loads(call("GET", cluster[1].url + "/buckets/many/props")[2])["props"]["n_val"] == 2)
        assert "consistent is not supported" in a.error("RpbSetBucketReq", bucket=b"many", props={"consistent": True})
        a.expect("RpbSetBucketResp", "RpbSetBucketReq", bucket=b"many", props={"consistent": False})
        assert "n_val" in a.error("RpbSetBucketReq", bucket=b"many", props={"n_val": 1000})
        a.expect("RpbResetBucketResp", "RpbResetBucketReq", bucket=b"many")
        eventually(lambda: c.expect("RpbGetBucketResp", "RpbGetBucketReq", bucket=b"many").props.n_val == 3)

        assert a.expect("RpbGetBucketResp", "RpbGetBucketTypeReq", type=b"maps").props.datatype == b"map"
        a.expect("RpbSetBucketResp", "RpbSetBucketTypeReq", type=b"plain", props={"allow_mult": False})
        eventually(lambda: not c.expect("RpbGetBucketResp", "RpbGetBucketTypeReq", type=b"plain").props.allow_mult)
        assert "unknown bucket type" in a.error("RpbGetBucketTypeReq", type=b"nope")
        typed = a.expect(
            "RpbPutResp", "RpbPutReq", bucket=b"b", key=b"k", type=b"plain", content=content(b"t"), return_body=True
        )
        assert [x.value for x in typed.content] == [b"t"]
        assert "DtUpdateReq" in a.error("RpbPutReq", bucket=b"b", key=b"k", type=b"sets", content=content(b"t"))

        a.expect("RpbCounterUpdateResp", "RpbCounterUpdateReq", bucket=b"legacy", key=b"c", amount=5)
        assert (
            a.expect(
                "RpbCounterUpdateResp", "RpbCounterUpdateReq", bucket=b"legacy", key=b"c", amount=-2, returnvalue=True
            ).value
            == 3
        )
        assert c.expect("RpbCounterGetResp", "RpbCounterGetReq", bucket=b"legacy", key=b"c", r=ALL).value == 3

        counter = a.expect(
            "DtUpdateResp",
            "DtUpdateReq",
            bucket=b"b",
            key=b"n",
            type=b"counts",
            op={"counter_op": {"increment": 7}},
            return_body=True,
        )
        assert counter.counter_value == 7
        fetched = c.expect("DtFetchResp", "DtFetchReq", bucket=b"b", key=b"n", type=b"counts", r=ALL)
        assert (fetched.type, fetched.value.counter_value) == (1, 7)
        a.expect(
            "DtUpdateResp",
            "DtUpdateReq",
            bucket=b"b",
            key=b"s",
            type=b"sets",
            op={"set_op": {"adds": [b"a", b"b", b"c"]}},
        )
        seen = c.expect("DtFetchResp", "DtFetchReq", bucket=b"b", key=b"s", type=b"sets", r=ALL)
        assert sorted(seen.value.set_value) == [b"a", b"b", b"c"] and seen.context
        left = a.expect(
            "DtUpdateResp",
            "DtUpdateReq",
            bucket=b"b",
            key=b"s",
            type=b"sets",
            context=seen.context,
            op={"set_op": {"removes": [b"b"]}},
            return_body=True,
        )
        assert sorted(left.set_value) == [b"a", b"c"]
        mapped = a.expect(
            "DtUpdateResp",
            "DtUpdateReq",
            bucket=b"b",
            type=b"maps",
            return_body=True,
            op={
                "map_op": {
                    "updates": [
                        {"field": {"name": b"visits", "type": 1}, "counter_op": {"increment": 2}},
                        {"field": {"name": b"name", "type": 3}, "register_op": b"ada"},
                        {"field": {"name": b"admin", "type": 4}, "flag_op": 1},
                        {
                            "field": {"name": b"inner", "type": 5},
                            "map_op": {
                                "updates": [{"field": {"name": b"tags", "type": 2}, "set_op": {"adds": [b"x"]}}]
                            },
                        },
                    ]
                }
            },
        )
        assert len(mapped.key) == 32
        entries = {(e.field.name, e.field.type): e for e in mapped.map_value}
        assert entries[(b"visits", 1)].counter_value == 2
        assert entries[(b"name", 3)].register_value == b"ada"
        assert entries[(b"admin", 4)].flag_value is True
        assert list(entries[(b"inner", 5)].map_value[0].set_value) == [b"x"]
        read = c.expect("DtFetchResp", "DtFetchReq", bucket=b"b", key=mapped.key, type=b"maps", r=ALL)
        assert len(read.value.map_value) == 4
        a.expect(
            "DtUpdateResp",
            "DtUpdateReq",
            bucket=b"b",
            key=b"h",
            type=b"hlls",
            op={"hll_op": {"adds": [b"u%d" % i for i in range(50)]}},
        )
        assert 45 <= c.expect("DtFetchResp", "DtFetchReq", bucket=b"b", key=b"h", type=b"hlls").value.hll_value <= 55
        missing = c.expect("DtFetchResp", "DtFetchReq", bucket=b"b", key=b"none", type=b"sets")
        assert missing.type == 2 and not missing.HasField("value")
        assert "holds sets" in a.error("DtUpdateReq", bucket=b"b", key=b"s", type=b"sets", op={"counter_op": {}})
        assert "holds no data types" in a.error("DtFetchReq", bucket=b"b", key=b"s", type=b"plain")
        a.expect("RpbDelResp", "RpbDelReq", bucket=b"b", key=b"s", type=b"sets")
        gone = c.expect("DtFetchResp", "DtFetchReq", bucket=b"b", key=b"s", type=b"sets", r=ALL)
        assert not gone.HasField("value")


def test_bad_frames_get_rpberrorresp_change_nothing_and_connections_are_bounded(make_cluster: MakeCluster) -> None:
    """An unknown code, a body that does not decode and one missing required fields are answered with
    RpbErrorResp and the connection goes on; an oversize frame is refused from its length and the
    connection closed; an index query says not yet; the connection past pb_connections_max is refused;
    nothing was written by any of it. Then the workload driver's PB target reads and updates there."""
    cluster = make_cluster(1, "n_val=1", "r=1", "w=1", "pb_connections_max=3", "pb_frame_bytes_max=1200000")
    with pb(cluster) as p:
        p.send_raw(b"\x00\x00\x00\x01\x63")
        assert p.recv()[1].errmsg == b"unknown or unsupported message code 99"
        p.send_raw(b"\x00\x00\x00\x04\x0b\xff\xff\xff")
        assert p.recv()[1].errmsg == b"the body of RpbPutReq does not decode"
        assert "lacks required fields: content" in p.error("RpbPutReq", bucket=b"b", key=b"k")
        assert "bucket" in p.error("RpbListKeysReq", timeout=10)
        assert "needs range_min and range_max" in p.error(
            "RpbIndexReq", bucket=b"b", index=b"i_bin", qtype=1, range_min=b"a"
        )
        assert "must be lowercase" in p.error("RpbIndexReq", bucket=b"b", index=b"I bin", qtype=0, key=b"v")
        assert "term_regex is not supported" in p.error(
            "RpbIndexReq", bucket=b"b", index=b"i_bin", qtype=0, key=b"v", term_regex=b"."
        )
        assert "bad secondary index" in p.error(
            "RpbPutReq", bucket=b"b", key=b"k", content=content(b"x", indexes=[{"key": b"n_int", "value": b"ten"}])
        )
        assert "exceeds the limit" in p.error("RpbPutReq", bucket=b"b", key=b"k", content=content(b"x" * 1048577))
        assert p.expect("RpbPingResp", "RpbPingReq") is None
        p.send_raw(b"\x00\x13\x00\x00\x0b")
        assert b"exceeds the limit of 1200000 bytes" in p.recv()[1].errmsg
        with pytest.raises((ConnectionError, OSError)):
            p.recv()
    with pb(cluster) as p:
        got = p.expect("RpbGetResp", "RpbGetReq", bucket=b"b", key=b"k")
        assert not got.content
        held = [pb(cluster) for _ in range(2)]
        try:
            for h in held:
                h.expect("RpbPingResp", "RpbPingReq")
            with pb(cluster) as extra:
                name, body = extra.recv()
                assert name == "RpbErrorResp" and b"pb_connections_max" in body.errmsg
        finally:
            for h in held:
                h.close()
        eventually(lambda: _pings(cluster))
    stats = json.loads(call("GET", cluster[0].url + "/stats")[2])
    assert stats["pb_connections_refused_total"] == 1 and stats["pb_frames_refused_total"] == 1
    _fuzz(cluster)
    assert asyncio.run(_drive_pb_target(cluster)) == (False, True, 0)


def _fuzz(cluster: LocalCluster, frames: int = 300) -> None:
    """Well-framed garbage (every request code, bodies of random bytes and mutated valid ones) gets one
    answer per frame on the same connection (listings, which answer with several, are left out), no
    internal error is logged, and the node goes on serving."""
    rng = random.Random(21)
    valid = schema.message("RpbPutReq")(bucket=b"f", key=b"k", content={"value": b"v"}).SerializeToString()
    codes = sorted(schema.NAMES)
    skipped = {schema.CODES[name] for name in ("RpbStartTls", "RpbListKeysReq", "RpbListBucketsReq")}
    with pb(cluster) as p:
        for _ in range(frames):
            code = rng.choice([c for c in codes if c not in skipped])
            if rng.random() < 0.5:
                body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(40)))
            else:
                body = bytearray(valid)
                for _ in range(rng.randrange(1, 4)):
                    body[rng.randrange(len(body))] = rng.getrandbits(8)
                body = bytes(body)
            p.send_raw(struct.pack(">IB", len(body) + 1, code) + body)
            name, _ = p.recv()
            assert name.startswith(("Rpb", "Dt")), name
        assert p.expect("RpbPingResp", "RpbPingReq") is None
    assert "internal error serving PB" not in cluster[0].log_path.read_text(errors="replace")


PEOPLE = [(b"sean", b"Sean", 1979), (b"ada", b"Ada", 1815), (b"alan", b"Alan", 1912), (b"grace", b"Grace", 1906)]


def _query(client: PbClient, **fields: object) -> list[Any]:
    """A streamed RpbIndexReq's frames, up to and with the one marked done."""
    client.send("RpbIndexReq", stream=True, **fields)
    frames: list[Any] = []
    for _ in range(100):
        name, body = client.recv()
        assert name == "RpbIndexResp", body
        frames.append(body)
        if body.done:
            return frames
    raise AssertionError("a streamed index query did not end")


def test_indexes_and_links_cross_pb_and_http_and_2i_queries_page_and_stream_over_pb(three: LocalCluster) -> None:
    """Objects stored over PB with _bin and _int entries and links read back over PB and HTTP with
    them, and one stored over HTTP with headers reads back over PB; exact and range queries,
    return_terms, $bucket and $key, max_results pages followed by continuation to the end, a streamed
    query in several frames ending with done, and a query in a bucket type, which sees only its own."""
    cluster = three
    operator(cluster[0].url, "/admin/bucket-types/tagged", body={"props": {}})
    operator(cluster[0].url, "/admin/bucket-types/tagged/activate")
    eventually(
        lambda: all(
            json.loads(call("GET", f"{node.url}/types/tagged/props")[2])["props"]["active"] for node in cluster.nodes
        )
    )
    with pb(cluster, 0) as a, pb(cluster, 1) as b:
        for key, name, year in PEOPLE:
            tags = [
                {"key": b"fname_bin", "value": name},
                {"key": b"BYEAR_INT", "value": b"%d" % year},
                {"key": b"tag_bin", "value": b"person"},
            ]
            links = [{"bucket": b"pb2i", "key": b"sean", "tag": b"friend"}]
            stored = a.expect(
                "RpbPutResp",
                "RpbPutReq",
                bucket=b"pb2i",
                key=key,
                content=content(b"v", indexes=tags, links=links),
                return_body=True,
                w=ALL,
            )
            assert [(p.key, p.value) for p in stored.content[0].indexes] == [
                (b"byear_int", b"%d" % year),
                (b"fname_bin", name),
                (b"tag_bin", b"person"),
            ]
        (alan,) = b.expect("RpbGetResp", "RpbGetReq", bucket=b"pb2i", key=b"alan", r=ALL).content
        assert [(p.key, p.value) for p in alan.indexes] == [
            (b"byear_int", b"1912"),
            (b"fname_bin", b"Alan"),
            (b"tag_bin", b"person"),
        ]
        assert [(x.bucket, x.key, x.tag) for x in alan.links] == [(b"pb2i", b"sean", b"friend")]
        status, headers, _ = call("GET", obj(cluster[2].url, "pb2i", "alan"))
        assert status == 200
        assert (headers["X-Riak-Index-byear_int"], headers["X-Riak-Index-fname_bin"]) == ("1912", "Alan")
        assert '</buckets/pb2i/keys/sean>; riaktag="friend"' in headers["Link"]

        http_headers = {
            "Content-Type": "text/plain",
            "X-Riak-Index-byear_int": "1843",
            "X-Riak-Index-tag_bin": "person",
            "Link": '</buckets/pb2i/keys/ada>; riaktag="mentor"',
        }
        status, _, body = call("PUT", obj(cluster[2].url, "pb2i", "ada two") + "?w=all", b"h", http_headers)
        assert status == 204, body
        (two,) = a.expect("RpbGetResp", "RpbGetReq", bucket=b"pb2i", key=b"ada two").content
        assert [(p.key, p.value) for p in two.indexes] == [(b"byear_int", b"1843"), (b"tag_bin", b"person")]
        assert [(x.bucket, x.key, x.tag) for x in two.links] == [(b"pb2i", b"ada", b"mentor")]

        def ask(**fields: object) -> Any:
            return a.expect("RpbIndexResp", "RpbIndexReq", bucket=b"pb2i", **fields)

        exact = ask(index=b"fname_bin", qtype=0, key=b"Ada")
        assert list(exact.keys) == [b"ada"] and not exact.done
        ranged = ask(index=b"byear_int", qtype=1, range_min=b"1900", range_max=b"1980")
        assert list(ranged.keys) == [b"grace", b"alan", b"sean"]
        terms = ask(index=b"byear_int", qtype=1, range_min=b"1800", range_max=b"2000", return_terms=True)
        assert [(p.key, p.value) for p in terms.results] == [
            (b"1815", b"ada"),
            (b"1843", b"ada two"),
            (b"1906", b"grace"),
            (b"1912", b"alan"),
            (b"1979", b"sean"),
        ]
        everyone = [b"ada", b"ada two", b"alan", b"grace", b"sean"]
        assert list(ask(index=b"$bucket", qtype=0, key=b"pb2i").keys) == everyone
        keyed = ask(index=b"$key", qtype=1, range_min=b"al", range_max=b"h", return_terms=True)
        assert [(p.key, p.value) for p in keyed.results] == [(b"alan", b"alan"), (b"grace", b"grace")]

        pages = []
        continuation = None
        for _ in range(10):
            fields: dict[str, object] = {"index": b"tag_bin", "qtype": 0, "key": b"person", "max_results": 2}
            if continuation is not None:
                fields["continuation"] = continuation
            page = ask(**fields)
            pages.append(list(page.keys))
            if not page.HasField("continuation"):
                break
            continuation = page.continuation
        assert pages == [[b"ada", b"ada two"], [b"alan", b"grace"], [b"sean"]]
        assert "invalid continuation" in a.error(
            "RpbIndexReq", bucket=b"pb2i", index=b"tag_bin", qtype=0, key=b"person", continuation=b"AAAA"
        )

        frames = _query(a, bucket=b"pb2i", index=b"byear_int", qtype=1, range_min=b"0", range_max=b"3000")
        assert len(frames) >= 3 and frames[-1].done
        streamed = [k for f in frames for k in f.keys]
        assert streamed == [b"ada", b"ada two", b"grace", b"alan", b"sean"]
        paged = _query(a, bucket=b"pb2i", index=b"tag_bin", qtype=0, key=b"person", max_results=4)
        assert [k for f in paged for k in f.keys] == [b"ada", b"ada two", b"alan", b"grace"]
        assert paged[-1].continuation

        a.expect(
            "RpbPutResp",
            "RpbPutReq",
            bucket=b"pb2i",
            key=b"typed",
            type=b"tagged",
            content=content(b"t", indexes=[{"key": b"tag_bin", "value": b"person"}]),
            w=ALL,
        )
        in_type = b.expect(
            "RpbIndexResp", "RpbIndexReq", bucket=b"pb2i", type=b"tagged", index=b"tag_bin", qtype=0, key=b"person"
        )
        assert list(in_type.keys) == [b"typed"]
        assert b"typed" not in ask(index=b"tag_bin", qtype=0, key=b"person").keys
        status, _, body = call("GET", f"{cluster[2].url}/types/tagged/buckets/pb2i/index/tag_bin/person")
        assert (status, json.loads(body)) == (200, {"keys": ["typed"]})
    assert asyncio.run(_both_clients(cluster)) == (True, True)


async def _both_clients(cluster: LocalCluster) -> tuple[bool, bool]:
    """The asyncio PB client's index query answers as the HTTP client's does, terms and pages alike."""
    async with HttpClient([cluster[0].url]) as http:
        pb_client = AsyncPbClient(cluster[1].host, cluster[1].pb_port)
        try:
            ranged = [
                await c.index("pb2i", "byear_int", 1800, 1950, return_terms=True, max_results=2)
                for c in (http, pb_client)
            ]
            following = [
                await c.index("pb2i", "byear_int", 1800, 1950, return_terms=True, continuation=r.continuation)
                for c, r in zip((http, pb_client), ranged, strict=True)
            ]
        finally:
            await pb_client.close()
    assert ranged[0].results == ((1815, "ada"), (1843, "ada two")), ranged
    assert following[0].results == ((1906, "grace"), (1912, "alan")), following
    return ranged[0] == ranged[1], following[0] == following[1]


async def _drive_pb_target(cluster: LocalCluster) -> tuple[bool, bool, int]:
    """What `dynastore bench ycsb --target dynastore-pb` does per record: a read, an update with the
    context the read gave, a read back."""
    target = await open_target(Endpoint(DYNASTORE_PB, (cluster[0].pb_address,)), 2)
    try:
        client = target.client(0)
        before = await client.read("user1")
        await client.update("user1", b"x" * 1000)
        await target.client(1).update("user1", b"y" * 1000)
        after = await client.read("user1")
        return before, after, target.counters()["reads_with_siblings"]
    finally:
        await target.close()


def _pings(cluster: LocalCluster) -> bool:
    with pb(cluster) as p:
        try:
            return p.call("RpbPingReq")[0] == "RpbPingResp"
        except (ConnectionError, OSError):
            return False


def test_with_security_on_pb_needs_authreq_and_the_users_permissions(make_cluster: MakeCluster) -> None:
    """Loopback node without TLS (where HTTP takes passwords in clear too): before RpbAuthReq only ping
    works; a wrong password is refused; after it the user's grants decide, as over HTTP."""
    cluster = make_cluster(1, "n_val=1", "r=1", "w=1")
    secure(cluster, "alice", "riak_kv.get", "b1")
    with pb(cluster) as p:
        assert p.expect("RpbPingResp", "RpbPingReq") is None
        assert "authenticate" in p.error("RpbGetReq", bucket=b"b1", key=b"k")
        assert "wrong password" in p.error("RpbAuthReq", user=b"alice", password=b"nope")
        p.expect("RpbAuthResp", "RpbAuthReq", user=b"alice", password=b"pw-alice")
        assert not p.expect("RpbGetResp", "RpbGetReq", bucket=b"b1", key=b"k").content
        assert "lacks riak_kv.get" in p.error("RpbGetReq", bucket=b"b2", key=b"k")
        assert "lacks riak_kv.put" in p.error("RpbPutReq", bucket=b"b1", key=b"k", content=content(b"x"))
        assert "lacks riak_kv.index" in p.error("RpbIndexReq", bucket=b"b1", index=b"$bucket", qtype=0, key=b"b1")
        assert "TLS" in p.error("RpbStartTls")


def test_with_tls_configured_authreq_needs_starttls_first(
    tmp_path: Path, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node with TLS: only ping is answered in clear (RpbAuthReq and the rest are refused, as its HTTP
    is HTTPS only); after RpbStartTls the connection runs inside TLS with the node's certificate and
    the user authenticates; bytes smuggled after StartTls in the
    same read end the connection instead of being read as if they came through TLS."""
    cert, key = certificate
    monkeypatch.setenv("DYNASTORE_CA", str(cert))
    overrides = (*FAST, "n_val=1", "r=1", "w=1", f"tls_cert_file={cert}", f"tls_key_file={key}")
    cluster = LocalCluster(tmp_path / "c", 1, overrides=overrides)
    try:
        cluster.start()
        cluster.wait_ready(60)
        secure(cluster, "bob", "riak_kv.put", "any")
        context = ssl.create_default_context(cafile=str(cert))
        with pb(cluster) as p:
            assert p.expect("RpbPingResp", "RpbPingReq") is None
            assert "inside TLS only" in p.error("RpbAuthReq", user=b"bob", password=b"pw-bob")
            assert "inside TLS only" in p.error("RpbGetReq", bucket=b"t", key=b"k")
            p.start_tls(context)
            p.expect("RpbAuthResp", "RpbAuthReq", user=b"bob", password=b"pw-bob")
            p.expect("RpbPutResp", "RpbPutReq", bucket=b"t", key=b"k", content=content(b"secret"))
        with pb(cluster) as p:
            p.send_raw(b"\x00\x00\x00\x01\xff" + b"\x00\x00\x00\x01\x01")
            assert p.recv()[0] == "RpbStartTls"
            p.sock.settimeout(5)
            # Closed: the ping was not answered, neither in clear nor as if it had come through TLS.
            assert p.sock.recv(1) == b""
        with pb(cluster) as p:
            # The same with StartTls ending exactly where one read of the node ends (64 KiB): what
            # follows it sits in the stream's buffer, not in the read, and must not pass either.
            padding = 65536 - 4 - 5
            p.send_raw(
                struct.pack(">IB", padding, 0xFE)
                + b"x" * (padding - 1)
                + b"\x00\x00\x00\x01\xff"
                # RpbGetServerInfoReq (7), in clear
                + b"\x00\x00\x00\x01\x07"
            )
            assert p.recv()[0] == "RpbErrorResp"
            assert p.recv()[0] == "RpbStartTls"
            p.sock.settimeout(5)
            try:
                tls_sock = context.wrap_socket(p.sock, server_hostname="127.0.0.1")
                tls_sock.settimeout(5)
                smuggled = tls_sock.recv(1)
            except (ssl.SSLError, OSError):
                smuggled = b""
            assert smuggled == b"", "a request sent in clear was answered inside TLS"
    finally:
        cluster.close()
