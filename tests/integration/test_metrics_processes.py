"""GET /metrics on real processes: the Prometheus families a node exports, counts that move by exactly
what clients did, phi for every peer, /stats' one-minute counters, the permission /metrics needs when
security is on, and the Grafana dashboard naming only metrics a node exports."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from http_util import call, get, obj, put
from prometheus_client.parser import text_string_to_metric_families

from dynastore.localcluster import LocalCluster

MakeCluster = Callable[..., LocalCluster]
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json"
FAMILIES = {
    "dynastore_request_duration_seconds": "histogram",
    "dynastore_requests": "counter",
    "dynastore_read_repairs": "counter",
    "dynastore_hints_created": "counter",
    "dynastore_hints_delivered": "counter",
    "dynastore_hints_pending": "gauge",
    "dynastore_handoff_partitions": "counter",
    "dynastore_handoff_bytes": "counter",
    "dynastore_handoff_partitions_receiving": "gauge",
    "dynastore_aae_exchanges": "counter",
    "dynastore_aae_keys_repaired": "counter",
    "dynastore_peer_phi": "gauge",
    "dynastore_ring_version": "gauge",
    "dynastore_members": "gauge",
    "dynastore_storage_used_bytes": "gauge",
    "dynastore_storage_file_bytes": "gauge",
    "dynastore_storage_map_size_bytes": "gauge",
    "dynastore_http_connections": "gauge",
    "dynastore_peer_connections": "gauge",
    "dynastore_background_rate_per_second": "gauge",
    "dynastore_background_latency_limit_seconds": "gauge",
}


def scrape(url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The node's families by name, each {"type": ..., "samples": {(sample name, labels): value}}."""
    status, head, body = call("GET", f"{url}/metrics", headers=headers)
    assert status == 200, body
    assert head["Content-Type"].startswith("text/plain; version=0.0.4"), head
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(body.decode()):
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        out[family.name] = {"type": family.type, "samples": samples}
    return out


def value(families: dict[str, Any], family: str, sample: str, **labels: str) -> float:
    return float(families[family]["samples"].get((sample, tuple(sorted(labels.items()))), 0.0))


def latency_count(families: dict[str, Any], op: str, role: str) -> float:
    return value(
        families, "dynastore_request_duration_seconds", "dynastore_request_duration_seconds_count", op=op, role=role
    )


def total_over(cluster: LocalCluster, fn: Callable[[dict[str, Any]], float]) -> float:
    return sum(fn(scrape(node.url)) for node in cluster.nodes)


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_metrics_count_exactly_the_requests_made_and_name_every_peer(make_cluster: MakeCluster) -> None:
    """Ten puts, twenty gets (five of them of absent keys) and three deletes through node0 move node0's
    coordinator histograms and outcome counters by exactly that; replicas elsewhere time the same work;
    every family of the contract is there with its type; each node has phi for each of its two peers."""
    cluster = make_cluster(3)
    base = cluster[0].url
    before = scrape(base)
    assert set(FAMILIES) <= set(before), sorted(set(FAMILIES) - set(before))
    for name, kind in FAMILIES.items():
        assert before[name]["type"] == kind, (name, before[name]["type"])
    replica_before = total_over(cluster, lambda f: latency_count(f, "put", "replica"))

    for i in range(10):
        assert put(base, "m", f"k{i}", b"v", query="w=3")[0] == 204
    for i in range(15):
        assert get(base, "m", f"k{i % 10}")[0] == 200
    for i in range(5):
        assert get(base, "m", f"absent{i}")[0] == 404
    for i in range(3):
        # An HTTP delete reads the key's context first (one more get each).
        assert call("DELETE", obj(base, "m", f"k{i}"))[0] == 204

    after = scrape(base)
    assert latency_count(after, "put", "coordinator") - latency_count(before, "put", "coordinator") == 10
    assert latency_count(after, "get", "coordinator") - latency_count(before, "get", "coordinator") == 23
    assert latency_count(after, "delete", "coordinator") - latency_count(before, "delete", "coordinator") == 3

    def outcome(families: dict[str, Any], op: str, result: str) -> float:
        return value(families, "dynastore_requests", "dynastore_requests_total", op=op, outcome=result)

    assert outcome(after, "put", "ok") - outcome(before, "put", "ok") == 10
    assert outcome(after, "get", "ok") - outcome(before, "get", "ok") == 18
    assert outcome(after, "get", "not_found") - outcome(before, "get", "not_found") == 5
    assert outcome(after, "delete", "ok") - outcome(before, "delete", "ok") == 3
    # A histogram's buckets are cumulative and end at its count; its sum is a time in seconds.
    buckets = [
        (float(dict(labels)["le"]), v)
        for (name, labels), v in after["dynastore_request_duration_seconds"]["samples"].items()
        if name.endswith("_bucket") and ("op", "put") in labels and ("role", "coordinator") in labels
    ]
    counts = [v for _, v in sorted(buckets)]
    assert counts == sorted(counts) and counts[-1] == latency_count(after, "put", "coordinator")
    put_sum = value(
        after,
        "dynastore_request_duration_seconds",
        "dynastore_request_duration_seconds_sum",
        op="put",
        role="coordinator",
    )
    assert 0 < put_sum < 10 * 5

    # w=3: every put reached the two other replicas before it was acknowledged (the coordinator's own
    # copy is not a message). Which node coordinated a put depends on the preference list, so count
    # replica puts over the cluster: at least two per put.
    replica_after = total_over(cluster, lambda f: latency_count(f, "put", "replica"))
    assert replica_after - replica_before >= 20
    assert total_over(cluster, lambda f: latency_count(f, "delete", "replica")) >= 3

    for node in cluster.nodes:
        families = scrape(node.url)
        peers = {dict(labels)["peer"] for (_, labels) in families["dynastore_peer_phi"]["samples"]}
        assert peers == {n.name for n in cluster.nodes} - {node.name}, (node.name, peers)
        assert value(families, "dynastore_members", "dynastore_members", state="valid") == 3
        assert value(families, "dynastore_peer_connections", "dynastore_peer_connections", direction="outbound") >= 1
        assert value(families, "dynastore_storage_map_size_bytes", "dynastore_storage_map_size_bytes") > 0


def test_stats_one_minute_counters_count_the_last_minute_and_read_repairs_total_keeps_running(
    make_cluster: MakeCluster,
) -> None:
    """node_gets and node_puts count what node0 coordinated (deletes run the put FSM, as in Riak);
    the latency fields keep Riak's names; a read repair shows in read_repairs and read_repairs_total
    and in /metrics."""
    cluster = make_cluster(3)
    node0 = cluster[0]
    for i in range(4):
        assert put(node0.url, "s", f"k{i}", b"v", query="w=3")[0] == 204
    for i in range(6):
        assert get(node0.url, "s", f"k{i % 4}")[0] == 200
    stats = cluster.stats(node0)
    assert stats["node_puts"] == 4 and stats["node_gets"] == 6, stats
    for op in ("get", "put"):
        for field in ("mean", "median", "95", "99", "100"):
            assert isinstance(stats[f"node_{op}_fsm_time_{field}"], int)
        assert 0 < stats[f"node_{op}_fsm_time_median"] <= stats[f"node_{op}_fsm_time_100"]
    assert stats["read_repairs"] == stats["read_repairs_total"] == 0

    # A replica that missed a write (stopped while it was made) is repaired by the next r=3 read.
    victim = cluster[2]
    victim.stop()
    assert put(node0.url, "s", "late", b"v2", query="w=2")[0] == 204
    victim.start()
    cluster.wait_ready(60)
    status, _, _ = get(node0.url, "s", "late", query="r=3")
    assert status == 200

    def repairs() -> tuple[int, int, float]:
        stats = [cluster.stats(n) for n in cluster.nodes]
        per_minute = sum(s["read_repairs"] for s in stats)
        total = sum(s["read_repairs_total"] for s in stats)
        scraped = total_over(cluster, lambda f: value(f, "dynastore_read_repairs", "dynastore_read_repairs_total"))
        return per_minute, total, scraped

    # The per-minute count is sampled once a second: wait for it to catch up with the running count.
    wait_for(lambda: repairs()[0] >= 1, 10, "a read repair in /stats")
    per_minute, total, scraped = repairs()
    assert per_minute == total == scraped >= 1


def test_with_security_on_metrics_needs_the_status_permission_like_stats(make_cluster: MakeCluster) -> None:
    """No credentials 401, a user without dynastore.status 403, with it 200 on /metrics as on /stats."""
    cluster = make_cluster(1)
    url = cluster[0].url
    secret = str(cluster.root / "cluster.secret")
    admin = ["--node", url, "--secret-file", secret]

    def cli(*args: str) -> None:
        result = subprocess.run(
            [sys.executable, "-m", "dynastore", *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stderr

    cli("security", "add-user", "watcher", "--password", "pw-watcher", *admin)
    cli("security", "add-user", "nobody", "--password", "pw-nobody", *admin)
    cli("security", "grant", "dynastore.status", "--on", "any", "--to", "watcher", *admin)
    cli("security", "enable", *admin)
    cluster.set_secure(True)

    def auth(user: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:pw-{user}".encode()).decode()}

    for route in ("/stats", "/metrics"):
        assert call("GET", url + route)[0] == 401
        assert call("GET", url + route, headers=auth("nobody"))[0] == 403
        assert call("GET", url + route, headers=auth("watcher"))[0] == 200
    assert "dynastore_ring_version" in scrape(url, auth("watcher"))


def test_the_grafana_dashboard_is_valid_json_and_uses_only_exported_metrics(make_cluster: MakeCluster) -> None:
    """Every metric name in the dashboard's expressions is one a real node exports (histogram and
    counter names as Prometheus stores them: _bucket, _sum, _count, _total)."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert any(v.get("type") == "datasource" for v in dashboard["templating"]["list"])
    expressions = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", []) if "expr" in target
    ]
    assert len(expressions) >= 8
    used = {name for expr in expressions for name in re.findall(r"\bdynastore_[a-z_]+", expr)}
    cluster = make_cluster(1)
    families = scrape(cluster[0].url)
    # A labelled family with no sample yet (no request made, no peer) is still exported: its TYPE says
    # which names Prometheus stores it under.
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exported = {name + suffix for name, family in families.items() for suffix in suffixes[family["type"]]}
    assert used <= exported, sorted(used - exported)
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("throughput", "latency", "read repair", "hint", "handoff", "anti-entropy", "phi", "members"):
        assert topic in titles, topic
