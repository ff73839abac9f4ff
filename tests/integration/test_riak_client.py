"""A real Riak HTTP client from PyPI (basho's `riak` 2.7.0) works against a dynastore cluster unchanged.

The client runs in its own venv as a subprocess (riak_client_env.py says why) and reports what it saw
as JSON (riak_client_scenario.py); this test sets the stage, runs it, and judges the report.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import riak_client_scenario as scenario
from http_util import call, get, obj
from riak_client_env import PyPIUnreachable, riak_client_python

from dynastore.localcluster import LocalCluster

MakeCluster = Callable[..., LocalCluster]
SCENARIO_TIMEOUT_S = 60.0


@pytest.fixture(scope="session")
def riak_python() -> Path:
    try:
        return riak_client_python()
    except PyPIUnreachable as exc:
        pytest.skip(f"PyPI is unreachable, so the Riak client cannot be installed: {exc}")


def run_scenario(
    python: Path, cluster: LocalCluster, script: str = scenario.__file__, protocol: str = "http"
) -> dict[str, Any]:
    """The scenario's report, the client speaking `protocol`: "http", or "pbc" (Protocol Buffers)."""
    nodes = [f"{node.host}:{node.pb_port if protocol == 'pbc' else node.http_port}" for node in cluster.nodes]
    done = subprocess.run(
        [str(python), "-W", "ignore", script, *nodes],
        capture_output=True,
        text=True,
        timeout=SCENARIO_TIMEOUT_S,
        env={**os.environ, "RIAK_CLIENT_PROTOCOL": protocol},
    )
    assert done.returncode == 0, f"the scenario crashed:\n{done.stdout}\n{done.stderr}"
    report: dict[str, Any] = json.loads(done.stdout)
    assert "error" not in report, f"the Riak client failed at step {report['step']!r}:\n{report['error']}"
    return report


@pytest.mark.parametrize("protocol", ["http", "pbc"])
def test_basho_riak_client_stores_fetches_resolves_siblings_and_deletes_over_http_and_pb(
    make_cluster: MakeCluster, riak_python: Path, protocol: str
) -> None:
    """basho's Riak client over HTTP and over Protocol Buffers (protocol='pbc'), on 3 nodes: feature
    detection (from `/` and `/stats`, or server info; a bucket of a type that does not exist is refused,
    not written to the default type); store and fetch with content type, charset and user metadata on a
    key with `/`, space, `+` and non-ASCII; If-None-Match; a server-chosen key; key listing and
    preflist; two stores with one stale vclock read back as siblings; a resolver merges them and the
    merge is stored, after which every node shows one value; delete, after which every node says it is
    gone. Objects written by a plain HTTP client and by the Riak client are readable by the other,
    under the same key."""
    cluster = make_cluster(3)
    base = cluster[0].url
    headers = {"Content-Type": "text/plain", "X-Riak-Meta-Source": "curl"}
    status, _, body = call("PUT", obj(base, scenario.BUCKET, scenario.FROM_PLAIN_HTTP_KEY), b"hi from http", headers)
    assert status == 204, body

    seen = run_scenario(riak_python, cluster, protocol=protocol)

    assert seen["ping"] == [True, True, True]
    assert seen["server_version"] == "2.2.3"
    assert seen["features"] == {
        "bucket_types": True,
        "preflists": True,
        "tombstone_vclocks": True,
        "quorum_controls": True,
    }
    # Only the default bucket type exists: a write to another fails loudly and never lands in the default.
    assert seen["named_type_store"] != "stored"
    assert seen["named_type_leaked_into_default"] is False
    assert seen["props"] == {"allow_mult": True, "n_val": 3, "last_write_wins": False}

    document = {"name": "Ada", "langs": ["en", "fr"]}
    assert seen["stored"]["key"] == scenario.KEY
    assert seen["stored"]["has_vclock"] and seen["stored"]["data"] == document
    for fetched in seen["fetched"]:
        assert fetched["exists"] and fetched["siblings"] == 1
        assert fetched["data"] == document
        assert (fetched["content_type"], fetched["charset"]) == ("application/json", "utf-8")
        assert fetched["usermeta"] == {"colour": "blue", "owner": "ada"}
        assert fetched["etag"] == seen["stored"]["etag"]
        # Whole seconds over HTTP; over PB the client adds last_mod_usecs, a float.
        assert isinstance(fetched["last_modified"], int | float) and fetched["last_modified"] > 1_600_000_000
    assert seen["from_plain_http"] == {"data": "hi from http", "usermeta": {"source": "curl"}}

    # Riak's refusal in each protocol: 412 over HTTP, "match_found" over PB.
    assert ("412" if protocol == "http" else "match_found") in seen["if_none_match"]
    assert seen["after_if_none_match"] == document

    generated = seen["generated"]["key"]
    assert generated and seen["generated"]["data"] == {"generated": True}
    expected_keys = sorted([scenario.KEY, scenario.FROM_PLAIN_HTTP_KEY, scenario.FOR_PLAIN_HTTP_KEY, generated])
    assert seen["keys"] == expected_keys
    assert seen["streamed_keys"] == expected_keys
    assert [entry["primary"] for entry in seen["preflist"]] == [True, True, True]
    assert sorted(entry["node"] for entry in seen["preflist"]) == [node.name for node in cluster.nodes]

    assert seen["siblings"] == {
        "count": 2,
        "values": ["left", "right"],
        "content_types": ["text/plain", "text/plain"],
        "etags_distinct": 2,
        "reading_one_value": "ConflictError",
    }
    assert seen["resolver_saw"] == [2]
    assert seen["after_resolution"] == [["left & right"]] * 3
    assert seen["exists_after_delete"] == [[False, False, False]] * 3

    status, response_headers, body = get(base, scenario.BUCKET, scenario.FOR_PLAIN_HTTP_KEY)
    assert (status, body, response_headers["Content-Type"]) == (200, b"hello from riak", "text/plain")
    status, _, _ = get(base, scenario.BUCKET, scenario.KEY)
    assert status == 404


@pytest.mark.parametrize("protocol", ["http", "pbc"])
def test_basho_riak_client_uses_counters_sets_maps_and_hlls_in_bucket_types_made_with_the_cli(
    make_cluster: MakeCluster, riak_python: Path, protocol: str
) -> None:
    """basho's Riak client over HTTP and over Protocol Buffers, on 3 nodes, in bucket types created and activated with
    `dynastore bucket-type`: counters incremented at every node and read back the same everywhere;
    a set updated, fetched with its context, an element discarded with it; a map of a register, a
    counter, a flag, a set and a nested map, a field removed; an HLL's estimate; a delete through the
    client; an operation of the wrong type refused."""
    import sys

    cluster = make_cluster(3)
    url = cluster[0].url
    for name, datatype in (("counters", "counter"), ("sets", "set"), ("maps", "map"), ("hlls", "hll")):
        for args in (("create", name, json.dumps({"props": {"datatype": datatype}})), ("activate", name)):
            done = subprocess.run(
                [sys.executable, "-m", "dynastore", "bucket-type", *args, "--node", url],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert done.returncode == 0, done.stderr

    def everywhere() -> bool:
        for node in cluster.nodes:
            for name in ("counters", "sets", "maps", "hlls"):
                status, _, body = call("GET", f"{node.url}/types/{name}/props")
                if status != 200 or not json.loads(body)["props"]["active"]:
                    return False
        return True

    cluster.wait(everywhere, 30, "the bucket types on every node")
    script = str(Path(scenario.__file__).with_name("riak_client_dt_scenario.py"))
    seen = run_scenario(riak_python, cluster, script, protocol)

    # Riak's RpbBucketProps has no `active` field: over PB the client cannot tell.
    assert seen["type_props"] == {"datatype": "counter", "active": True if protocol == "http" else None}
    assert seen["counter"] == [6, 6, 6]
    assert seen["counter_after_decrement"] == 4
    assert seen["counter_missing"] == 0
    assert seen["set"] == ["blue", "green", "red"] and seen["set_has_context"]
    assert seen["set_after_discard"] == [["blue", "green"]] * 3
    assert seen["map"] == {
        "address_map": {"city_register": "London"},
        "admin_flag": True,
        "langs_set": ["en", "fr"],
        "name_register": "Ada",
        "visits_counter": 3,
    }
    assert seen["map_after_remove"] == {
        "address_map": {"city_register": "London"},
        "admin_flag": True,
        "name_register": "Ada",
        "visits_counter": 4,
    }
    assert abs(seen["hll"] - 300) <= 15
    assert seen["set_after_delete"] == [[]] * 3
    assert seen["wrong_type"] != "stored"


@pytest.mark.parametrize("protocol", ["http", "pbc"])
def test_basho_riak_client_tags_objects_with_indexes_and_links_and_queries_them_over_http_and_pb(
    make_cluster: MakeCluster, riak_python: Path, protocol: str
) -> None:
    """basho's Riak client over HTTP and over Protocol Buffers, on 3 nodes: objects with _bin and _int
    index entries and a link are stored and fetched back with them; exact and range queries,
    return_terms, the $bucket index, pages of max_results followed by continuation to the end, and a
    streamed query, as a Riak user writes them."""
    import riak_client_index_scenario as index_scenario

    cluster = make_cluster(3)
    seen = run_scenario(riak_python, cluster, index_scenario.__file__, protocol)
    assert seen["indexes"] == [["byear_int", 1912], ["fname_bin", "Alan"], ["tag_bin", "person"]]
    assert seen["links"] == [[index_scenario.BUCKET, "sean", "friend"]]
    assert seen["exact"] == ["ada"]
    assert seen["range"] == ["grace", "alan", "sean"]
    assert seen["terms"] == [[1815, "ada"], [1906, "grace"], [1912, "alan"], [1979, "sean"]]
    assert seen["bucket_index"] == ["ada", "alan", "grace", "sean"]
    assert seen["pages"] == [["ada", "alan", "grace"], ["sean"]]
    assert seen["streamed"] == ["ada", "grace", "alan", "sean"]
