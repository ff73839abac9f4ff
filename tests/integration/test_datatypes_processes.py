"""Bucket types and data types on real processes, through the CLI and Riak's HTTP API: a type is
created, refused while inactive, activated, persisted across restarts and gossiped to every node;
counters, sets, maps and HyperLogLogs are updated at any node and read the same everywhere, removes
remove what their context saw (412 when there is nothing to remove), deletes delete, wrong operations
and plain objects are refused, typed plain buckets keep their own namespace, and the legacy counters
of Riak 1.4 work."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from http_util import call
from proc_util import run_dynastore as cli

from dynastore.localcluster import LocalCluster

MakeCluster = Callable[..., LocalCluster]


def dt_url(base: str, type_name: str, bucket: str, key: str | None = None, query: str = "") -> str:
    url = f"{base}/types/{type_name}/buckets/{quote(bucket, safe='')}/datatypes"
    if key is not None:
        url += "/" + quote(key, safe="")
    return url + (f"?{query}" if query else "")


def update(
    base: str, type_name: str, bucket: str, key: str | None, op: Any, query: str = ""
) -> tuple[int, dict[str, str], bytes]:
    return call(
        "POST",
        dt_url(base, type_name, bucket, key, query),
        json.dumps(op).encode(),
        {"Content-Type": "application/json"},
    )


def fetch(base: str, type_name: str, bucket: str, key: str) -> tuple[int, Any]:
    status, _, body = call("GET", dt_url(base, type_name, bucket, key))
    return status, json.loads(body) if status == 200 else body.decode()


def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def wait_active(urls: tuple[str, ...], name: str) -> None:
    """Until every node has heard (by gossip) that the type is active."""

    def active(url: str) -> bool:
        status, _, body = call("GET", f"{url}/types/{name}/props")
        return status == 200 and json.loads(body)["props"].get("active") is True

    eventually(lambda: all(active(url) for url in urls))


def create_type(url: str, name: str, props: dict[str, Any]) -> None:
    done = cli("bucket-type", "create", name, json.dumps({"props": props}), "--node", url)
    assert done.returncode == 0, done.stderr
    done = cli("bucket-type", "activate", name, "--node", url)
    assert done.returncode == 0, done.stderr


def test_bucket_types_are_created_activated_checked_and_persisted(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3)
    a, b, c = (node.url for node in cluster.nodes)
    done = cli("bucket-type", "create", "counters", '{"props":{"datatype":"counter","n_val":3}}', "--node", a)
    assert done.returncode == 0, done.stderr
    listed = cli("bucket-type", "list", "--node", b)
    assert "counters (not active)" in listed.stdout or "counters" not in listed.stdout  # gossip may lag
    # Created but inactive: 400; unknown: 404 (props and data alike).
    eventually(lambda: call("GET", f"{c}/types/counters/props")[0] == 200)
    assert update(c, "counters", "b", "k", {"increment": 1})[0] == 400
    assert call("GET", f"{a}/types/nope/props")[0] == 404
    assert call("PUT", f"{a}/types/nope/props", b'{"props":{"n_val":2}}')[0] == 404
    assert update(a, "nope", "b", "k", {"increment": 1})[0] == 404
    # A datatype that is not one is refused; so is changing it once active.
    bad = cli("bucket-type", "create", "trees", '{"props":{"datatype":"tree"}}', "--node", a)
    assert bad.returncode != 0 and "datatype must be" in bad.stderr
    assert cli("bucket-type", "activate", "counters", "--node", a).returncode == 0
    status = cli("bucket-type", "status", "counters", "--node", b)
    eventually(lambda: "counters is active" in cli("bucket-type", "status", "counters", "--node", c).stdout)
    assert status.returncode == 0
    changed = call("PUT", f"{a}/types/counters/props", b'{"props":{"datatype":"set"}}')
    assert changed[0] == 400 and b"fixed" in changed[2]
    refused = cli("bucket-type", "update", "counters", '{"props":{"datatype":"map"}}', "--node", a)
    assert refused.returncode != 0
    # A type without a datatype: plain objects in their own namespace, inheriting the type's n_val.
    create_type(a, "two", {"n_val": 2})
    wait_active((a, b, c), "two")
    props = json.loads(call("GET", f"{b}/types/two/buckets/pics/props")[2])["props"]
    assert props["n_val"] == 2 and props["name"] == "pics"
    stored = call("PUT", f"{a}/types/two/buckets/pics/keys/k", b"typed", {"Content-Type": "text/plain"})
    assert stored[0] == 204
    assert call("GET", f"{b}/types/two/buckets/pics/keys/k")[2] == b"typed"
    assert call("GET", f"{b}/buckets/pics/keys/k")[0] == 404  # another namespace
    assert call("PUT", f"{a}/buckets/pics/keys/k", b"plain", {"Content-Type": "text/plain"})[0] == 204
    assert call("GET", f"{c}/types/two/buckets/pics/keys/k")[2] == b"typed"
    typed_buckets = json.loads(call("GET", f"{a}/types/two/buckets?buckets=true")[2])["buckets"]
    default_buckets = json.loads(call("GET", f"{a}/buckets?buckets=true")[2])["buckets"]
    assert typed_buckets == ["pics"] and default_buckets == ["pics"]
    keys = json.loads(call("GET", f"{a}/types/two/buckets/pics/keys?keys=true")[2])["keys"]
    assert keys == ["k"]
    # The bucket's own change overrides its type's; its datatype is the type's.
    assert call("PUT", f"{a}/types/two/buckets/pics/props", b'{"props":{"n_val":1}}')[0] == 204
    eventually(lambda: json.loads(call("GET", f"{c}/types/two/buckets/pics/props")[2])["props"]["n_val"] == 1)
    assert call("PUT", f"{a}/types/two/buckets/pics/props", b'{"props":{"datatype":"set"}}')[0] == 400
    # A reset bucket follows its type again, later changes of the type included.
    assert call("DELETE", f"{a}/types/two/buckets/pics/props")[0] == 204
    assert call("PUT", f"{a}/types/two/props", b'{"props":{"n_val":1}}')[0] == 204
    eventually(lambda: json.loads(call("GET", f"{c}/types/two/buckets/pics/props")[2])["props"]["n_val"] == 1)
    # A default bucket may not be named like a typed one (NUL type NUL bucket): no way around a type.
    for method, url in (
        ("GET", f"{a}/riak/%00two%00pics/k"),
        ("GET", f"{a}/buckets/%00two%00pics/keys/k"),
        ("PUT", f"{a}/buckets/%00two%00pics/keys/k"),
        ("GET", f"{a}/types/default/buckets/%00two%00pics/props"),
    ):
        assert call(method, url, b"x" if method == "PUT" else None)[0] == 400, url
    # Types are cluster metadata: they survive a restart of every node.
    for node in cluster.nodes:
        node.stop()
    cluster.start()
    cluster.wait_ready(60)
    listed = cli("bucket-type", "list", "--node", c)
    assert "counters (active)" in listed.stdout and "two (active)" in listed.stdout, listed.stdout
    assert call("GET", f"{b}/types/two/buckets/pics/keys/k")[2] == b"typed"


def test_counters_sets_maps_and_hlls_converge_and_refuse_what_is_wrong(make_cluster: MakeCluster) -> None:
    cluster = make_cluster(3, "dt_set_elements_max=50")
    a, b, c = (node.url for node in cluster.nodes)
    create_type(a, "counters", {"datatype": "counter"})
    create_type(a, "sets", {"datatype": "set"})
    create_type(a, "maps", {"datatype": "map"})
    create_type(a, "hlls", {"datatype": "hll", "hll_precision": 12})
    for name in ("counters", "sets", "maps", "hlls"):
        wait_active((a, b, c), name)

    # Counters: increments at every node add up, everywhere.
    assert fetch(a, "counters", "c", "hits")[0] == 404
    for i, url in enumerate((a, b, c, a, b)):
        assert update(url, "counters", "c", "hits", {"increment": i + 1})[0] == 204
    assert update(c, "counters", "c", "hits", {"decrement": 2})[0] == 204
    assert update(c, "counters", "c", "hits", 3)[0] == 204
    for url in (a, b, c):
        assert fetch(url, "counters", "c", "hits") == (200, {"type": "counter", "value": 16})
    status, _, body = update(b, "counters", "c", "hits", {"increment": 4}, "returnbody=true")
    assert status == 200 and json.loads(body)["value"] == 20
    assert update(a, "counters", "c", "hits", {"add": "x"})[0] == 400
    assert update(a, "counters", "c", "hits", {"increment": "many"})[0] == 400
    assert call("PUT", f"{a}/types/counters/buckets/c/keys/hits", b"5", {"Content-Type": "text/plain"})[0] == 400
    # A data type's bucket keeps siblings whatever it is told: one value per key would lose increments.
    assert call("PUT", f"{a}/types/counters/buckets/c/props", b'{"props":{"allow_mult":false}}')[0] == 400
    assert call("PUT", f"{a}/types/counters/buckets/c/props", b'{"props":{"last_write_wins":true}}')[0] == 400
    # The data types' content types are theirs: a plain object cannot pose as one.
    fake = {"Content-Type": "application/riak_counter"}
    assert call("PUT", f"{a}/buckets/legacy/keys/n", b"garbage", fake)[0] == 400
    # A server-chosen key.
    status, headers, _ = update(a, "counters", "c", None, {"increment": 7})
    assert status == 201 and headers["Location"].startswith("/types/counters/buckets/c/datatypes/")
    made = headers["Location"].rsplit("/", 1)[1]
    assert fetch(b, "counters", "c", made)[1]["value"] == 7

    # Sets: adds, removes with and without a context, 412 for what is not there.
    assert update(a, "sets", "s", "tags", {"add_all": ["red", "green", "blue"]})[0] == 204
    status, found = fetch(b, "sets", "s", "tags")
    assert status == 200 and found["value"] == ["blue", "green", "red"] and found["context"]
    assert update(c, "sets", "s", "tags", {"remove": "red", "context": found["context"]})[0] == 204
    assert update(a, "sets", "s", "tags", {"remove": "purple"})[0] == 412
    assert update(a, "sets", "s", "tags", {"remove": "red", "context": "bm90IGEgY29udGV4dA=="})[0] == 400
    assert update(a, "sets", "s", "tags", {"increment": 1})[0] == 400
    assert update(a, "sets", "s", "tags", {"add_all": [f"e{i}" for i in range(60)]})[0] == 413
    for url in (a, b, c):
        assert fetch(url, "sets", "s", "tags")[1]["value"] == ["blue", "green"]
    # include_context=false leaves the context out.
    plain = json.loads(call("GET", dt_url(a, "sets", "s", "tags", "include_context=false"))[2])
    assert "context" not in plain
    # Delete, then the key is gone at every node; a new add starts afresh.
    assert call("DELETE", dt_url(b, "sets", "s", "tags"))[0] == 204
    for url in (a, b, c):
        assert fetch(url, "sets", "s", "tags")[0] == 404
    assert call("DELETE", dt_url(b, "sets", "s", "tags"))[0] == 404
    assert update(c, "sets", "s", "tags", {"add": "again"})[0] == 204
    assert fetch(a, "sets", "s", "tags")[1]["value"] == ["again"]
    # The Basho client deletes through the plain object path.
    assert call("DELETE", f"{a}/types/sets/buckets/s/keys/tags")[0] == 204
    assert fetch(c, "sets", "s", "tags")[0] == 404

    # Maps: registers, counters, flags, sets and nested maps; a removed field is gone.
    op = {
        "update": {
            "name_register": "ada",
            "visits_counter": {"increment": 2},
            "admin_flag": "enable",
            "langs_set": {"add_all": ["en", "fr"]},
            "address_map": {"update": {"city_register": "london"}},
        }
    }
    assert update(a, "maps", "m", "user", op)[0] == 204
    assert (
        update(b, "maps", "m", "user", {"update": {"visits_counter": {"increment": 1}, "admin_flag": "disable"}})[0]
        == 204
    )
    status, found = fetch(c, "maps", "m", "user")
    assert status == 200
    assert found["value"] == {
        "name_register": "ada",
        "visits_counter": 3,
        "admin_flag": False,
        "langs_set": ["en", "fr"],
        "address_map": {"city_register": "london"},
    }
    assert update(c, "maps", "m", "user", {"remove": ["langs_set"], "context": found["context"]})[0] == 204
    assert update(a, "maps", "m", "user", {"remove": "nothing_set"})[0] == 412
    assert update(a, "maps", "m", "user", {"update": {"x_tree": 1}})[0] == 400
    assert "langs_set" not in fetch(a, "maps", "m", "user")[1]["value"]

    # HyperLogLogs: distinct elements, estimated.
    elements = [f"visitor-{i}" for i in range(2000)]
    for start in range(0, 2000, 50):  # an operation names at most dt_set_elements_max (here 50) elements
        url = (a, b, c)[start // 50 % 3]
        assert update(url, "hlls", "h", "day", {"add_all": elements[start : start + 50]})[0] == 204
    assert update(a, "hlls", "h", "day", {"add_all": elements[:51]})[0] == 413
    assert update(b, "hlls", "h", "day", {"add": "visitor-1"})[0] == 204
    estimate = fetch(c, "hlls", "h", "day")[1]["value"]
    assert abs(estimate - 2000) < 2000 * 0.05, estimate
    assert update(b, "hlls", "h", "day", {"remove": "x"})[0] == 400

    # Riak 1.4's counters, in a bucket of the default type.
    resources = json.loads(call("GET", f"{a}/", headers={"Accept": "application/json"})[2])
    assert resources["riak_kv_wm_counter"] == "/buckets"
    assert call("POST", f"{a}/buckets/legacy/counters/n", b"5")[0] == 204
    assert call("POST", f"{b}/buckets/legacy/counters/n", b"-2")[0] == 204
    assert call("GET", f"{c}/buckets/legacy/counters/n")[2].strip() == b"3"
    assert call("POST", f"{c}/buckets/legacy/counters/n", b"lots")[0] == 400
    assert call("POST", f"{c}/buckets/legacy/counters/n", b" " * 60 + b"1000000")[0] == 400
    assert call("PUT", f"{a}/buckets/single/props", b'{"props":{"allow_mult":false}}')[0] == 204
    eventually(lambda: call("POST", f"{a}/buckets/single/counters/n", b"1")[0] == 409)

    # The CLI.
    got = cli("dt", "update", "counters", "c", "cli", '{"increment": 5}', "--node", b)
    assert got.returncode == 0 and got.stdout.strip() == "5", got.stderr
    got = cli("dt", "get", "counters", "c", "cli", "--node", c)
    assert got.returncode == 0 and got.stdout.strip() == "5", got.stderr
    missing = cli("dt", "get", "counters", "c", "absent", "--node", c)
    assert missing.returncode != 0 and "not found" in missing.stderr
