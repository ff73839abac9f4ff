"""Real node processes on loopback: the cluster behaviours a user relies on, end to end over HTTP."""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cluster_settings import FAST
from http_util import call, get, obj, put

from dynastore.localcluster import LocalCluster, http_json

MakeCluster = Callable[..., LocalCluster]


def contiguous_ports(count: int) -> int:
    """A base port such that base .. base+count-1 are all free."""
    for base in range(21000, 60000, 97):
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sock.bind(("127.0.0.1", port))
                socks.append(sock)
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no free port range")


def preflist(base: str, bucket: str, key: str) -> list[str]:
    status, _, body = call("GET", obj(base, bucket, key) + "/preflist")
    assert status == 200, body
    return [entry["node"] for entry in json.loads(body)["preflist"] if entry["primary"]]


def local_copy(cluster: LocalCluster, name: str, bucket: str, key: str) -> list[bytes] | None:
    node = next(n for n in cluster.nodes if n.name == name)
    status, _, body = call("GET", f"{node.url}/admin/local/{bucket}/{key}")
    if status == 404:
        return None
    assert status == 200, body
    return [s["value"].encode() for s in json.loads(body)["siblings"] if not s["deleted"]]


def node_named(cluster: LocalCluster, name: str) -> int:
    return next(n.index for n in cluster.nodes if n.name == name)


class UpProcess:
    """`dynastore up` run as a user would, its output read line by line with a bound on every wait."""

    def __init__(self, data_dir: Path, nodes: int, http_port: int, peer_port: int, pb_port: int) -> None:
        cmd = [
            sys.executable,
            "-m",
            "dynastore",
            "up",
            "--nodes",
            str(nodes),
            "--data-dir",
            str(data_dir),
            "--http-port",
            str(http_port),
            "--peer-port",
            str(peer_port),
            "--pb-port",
            str(pb_port),
        ]
        for pair in FAST:
            cmd += ["--set", pair]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.put(raw.decode(errors="replace").rstrip())

    def wait_for(self, text: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            self.seen.append(line)
            if line == text:
                return
        raise AssertionError(f"`up` did not print {text!r} within {timeout_s} s; it printed: {self.seen}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def test_dynastore_up_serves_round_trips_siblings_resolution_and_lww_then_restarts_with_its_data(
    tmp_path: Path,
) -> None:
    """`dynastore up` starts 3 node processes, prints ready; put/get/delete round-trip; two writes with
    the same stale context give a 300 with both siblings; a write with the merged context resolves them;
    a last_write_wins bucket never shows siblings; Ctrl-C stops every node; running it again restarts
    the same cluster with its data."""
    http_base = contiguous_ports(9)
    peer_base, pb_base = http_base + 3, http_base + 6
    up = UpProcess(tmp_path / "data", 3, http_base, peer_base, pb_base)
    urls = [f"http://127.0.0.1:{http_base + i}" for i in range(3)]
    try:
        up.wait_for("ready")
        # Each node's line names its PB endpoint too, node i at pb-port + i.
        for i in range(3):
            assert any(f"node{i}: " in line and f"pb 127.0.0.1:{pb_base + i}" in line for line in up.seen), up.seen
        status, _, _ = put(urls[0], "b", "k", b"hello")
        assert status == 204
        status, headers, body = get(urls[1], "b", "k")
        assert (status, body, headers["Content-Type"]) == (200, b"hello", "text/plain")
        stale = headers["X-Riak-Vclock"]

        assert put(urls[1], "b", "k", b"left", stale)[0] == 204
        assert put(urls[2], "b", "k", b"right", stale)[0] == 204
        status, headers, body = get(urls[0], "b", "k", accept="multipart/mixed")
        assert status == 300
        assert b"left" in body and b"right" in body and "multipart/mixed" in headers["Content-Type"]
        status, _, listing = get(urls[0], "b", "k")
        assert status == 300 and listing.startswith(b"Siblings:") and len(listing.split()) == 3
        assert put(urls[0], "b", "k", b"resolved", headers["X-Riak-Vclock"])[0] == 204
        status, _, body = get(urls[2], "b", "k")
        assert (status, body) == (200, b"resolved")

        props = json.dumps({"props": {"last_write_wins": True}}).encode()
        status, _, _ = call("PUT", f"{urls[0]}/buckets/lww/props", props, {"Content-Type": "application/json"})
        assert status == 204
        deadline = time.monotonic() + 10
        while http_json(f"{urls[2]}/buckets/lww/props")["props"]["last_write_wins"] is not True:
            assert time.monotonic() < deadline, "bucket props did not spread"
            time.sleep(0.1)
        for i, url in enumerate(urls):
            assert put(url, "lww", "k", b"v%d" % i)[0] == 204
        for url in urls:
            status, _, body = get(url, "lww", "k")
            assert (status, body) == (200, b"v2")

        status, _, _ = call("DELETE", obj(urls[1], "b", "k"))
        assert status == 204
        status, headers, _ = get(urls[0], "b", "k")
        assert status == 404 and "X-Riak-Vclock" in headers
        assert call("DELETE", obj(urls[1], "b", "never"))[0] == 404
        assert put(urls[0], "b", "kept", b"survives")[0] == 204
    finally:
        assert up.stop() == 0
    up_again = UpProcess(tmp_path / "data", 3, http_base, peer_base, pb_base)
    try:
        up_again.wait_for("ready")
        status, _, body = get(urls[2], "b", "kept")
        assert (status, body) == (200, b"survives")
    finally:
        assert up_again.stop() == 0


def test_with_two_primaries_killed_a_w2_write_succeeds_and_hints_drain_after_restart(
    make_cluster: MakeCluster,
) -> None:
    """5 nodes, n_val 3: SIGKILL two primaries of a key; a w=2 write still succeeds (on fallbacks); after
    restarting them the hints are delivered, the fallbacks drop their copies, hints pending returns to 0."""
    cluster = make_cluster(5)
    base = cluster[0].url
    owners = preflist(base, "b", "k")
    survivor = cluster[node_named(cluster, owners[0])]
    victims = [cluster[node_named(cluster, name)] for name in owners[1:]]
    for victim in victims:
        victim.kill()
    status, _, body = put(survivor.url, "b", "k", b"sloppy", query="w=2")
    assert status == 204, body
    hinted = sum(cluster.stats(n)["hints_pending"] for n in cluster.nodes if n.alive)
    assert hinted == 2
    for victim in victims:
        victim.start()
    cluster.wait_ready(60)
    cluster.wait(lambda: sum(cluster.stats(n)["hints_pending"] for n in cluster.nodes) == 0, 30, "hints to drain")
    for name in owners:
        assert local_copy(cluster, name, "b", "k") == [b"sloppy"]
    for node in cluster.nodes:
        if node.name not in owners:
            assert local_copy(cluster, node.name, "b", "k") is None, f"{node.name} kept its fallback copy"


def test_a_replica_that_missed_a_write_has_it_after_one_get(make_cluster: MakeCluster) -> None:
    """Read repair: a primary stopped during a write (and with no hint to bring it back) holds the
    value after one GET."""
    cluster = make_cluster(3, "hinted_handoff_enabled=false")
    base = cluster[0].url
    owners = preflist(base, "b", "k")
    missing = cluster[node_named(cluster, owners[2])]
    missing.stop()
    status, _, body = put(cluster[node_named(cluster, owners[0])].url, "b", "k", b"v", query="w=2")
    assert status == 204, body
    missing.start()
    cluster.wait_ready(60)
    assert local_copy(cluster, missing.name, "b", "k") is None
    status, _, body = get(base, "b", "k", query="r=3")
    assert (status, body) == (200, b"v")
    cluster.wait(lambda: local_copy(cluster, missing.name, "b", "k") == [b"v"], 10, "read repair")
    assert sum(cluster.stats(n)["read_repairs_total"] for n in cluster.nodes) >= 1


def test_acknowledged_writes_survive_kill_9_of_every_node(make_cluster: MakeCluster) -> None:
    """Durable mode: SIGKILL every node right after a batch of acknowledged writes; after a restart
    every acknowledged write is there."""
    cluster = make_cluster(3)
    acknowledged = []
    for i in range(200):
        node = cluster[i % 3]
        status, _, _ = put(node.url, "durable", f"key{i}", b"value%d" % i, query="w=2")
        if status == 204:
            acknowledged.append(i)
    assert len(acknowledged) == 200
    for node in cluster.nodes:
        node.signal(signal.SIGKILL)
    for node in cluster.nodes:
        node.kill()
    cluster.start()
    cluster.wait_ready(60)
    for i in acknowledged:
        status, _, body = get(cluster[(i + 1) % 3].url, "durable", f"key{i}", query="r=2")
        assert (status, body) == (200, b"value%d" % i), i


def test_a_deleted_key_stays_deleted_after_the_node_that_missed_the_delete_returns(make_cluster: MakeCluster) -> None:
    """A primary down during a delete still holds the old value; once back (no hints, so only
    anti-resurrection logic protects it) reads still say 404 and the stale replica is repaired."""
    cluster = make_cluster(3, "hinted_handoff_enabled=false")
    base = cluster[0].url
    assert put(base, "b", "gone", b"old")[0] == 204
    owners = preflist(base, "b", "gone")
    missed = cluster[node_named(cluster, owners[2])]
    cluster.wait(lambda: local_copy(cluster, missed.name, "b", "gone") == [b"old"], 10, "replication")
    missed.stop()
    coordinator = cluster[node_named(cluster, owners[0])]
    assert call("DELETE", obj(coordinator.url, "b", "gone"))[0] == 204
    missed.start()
    cluster.wait_ready(60)
    assert local_copy(cluster, missed.name, "b", "gone") == [b"old"]
    for node in cluster.nodes:
        assert get(node.url, "b", "gone", query="r=3")[0] == 404
    cluster.wait(lambda: local_copy(cluster, missed.name, "b", "gone") == [], 10, "the tombstone to reach it")


def set_props(base: str, bucket: str, props: dict[str, object]) -> None:
    body = json.dumps({"props": props}).encode()
    status, _, reply = call("PUT", f"{base}/buckets/{bucket}/props", body, {"Content-Type": "application/json"})
    assert status == 204, reply


def test_with_a_primary_stopped_pr_pw_and_a_bucket_rw_of_all_refuse_what_one_accepts(make_cluster: MakeCluster) -> None:
    """3 nodes, one stopped. In a bucket of n_val 2, r=all and w=all are met with the fallback while
    pr=all and pw=all get 503, and pr=1 and pw=1 succeed. In a bucket of n_val 3 with rw=all (no
    fallback left), a DELETE naming no quorum gets 503 and deletes nothing; given r and w win over the
    bucket's rw; with the bucket's rw set to 1 the same DELETE succeeds."""
    cluster = make_cluster(3)
    base, stopped = cluster[0].url, cluster[2]
    set_props(base, "pp", {"n_val": 2})
    set_props(base, "rw", {"rw": "all"})
    cluster.wait(lambda: http_json(cluster[1].url + "/buckets/pp/props")["props"]["n_val"] == 2, 10, "props")
    key = next(k for k in (f"k{i}" for i in range(100)) if stopped.name in preflist(base, "pp", k))
    for bucket, name in (("pp", key), ("rw", "k1"), ("rw", "k2")):
        assert put(base, bucket, name, b"v", query="w=all")[0] == 204
    stopped.stop()

    def fallback_in_use() -> bool:
        status, _, body = call("GET", obj(base, "pp", key) + "/preflist")
        return status == 200 and any(not entry["primary"] for entry in json.loads(body)["preflist"])

    cluster.wait(fallback_in_use, 20, f"{stopped.name} to be judged down")
    assert get(base, "pp", key, query="r=all")[:3:2] == (200, b"v")
    assert get(base, "pp", key, query="pr=all")[0] == 503
    assert get(base, "pp", key, query="pr=1")[:3:2] == (200, b"v")
    assert put(base, "pp", key, b"w", query="w=all")[0] == 204
    assert put(base, "pp", key, b"x", query="pw=all")[0] == 503
    assert put(base, "pp", key, b"y", query="pw=1")[0] == 204

    status, _, body = call("DELETE", obj(base, "rw", "k1"))
    assert status == 503, body
    assert get(base, "rw", "k1")[:3:2] == (200, b"v")
    assert call("DELETE", obj(base, "rw", "k2") + "?r=1&w=1")[0] == 204
    assert call("DELETE", obj(base, "rw", "k1") + "?rw=quorum")[0] == 204
    assert put(base, "rw", "k1", b"again")[0] == 204
    set_props(base, "rw", {"rw": 1})
    assert call("DELETE", obj(base, "rw", "k1"))[0] == 204
    assert get(base, "rw", "k1")[0] == get(base, "rw", "k2")[0] == 404


def test_a_node_holds_at_most_http_connections_max_clients_and_tells_the_next_one_503(
    make_cluster: MakeCluster,
) -> None:
    """`--set http_connections_max=3`: three kept-alive clients are served, a fourth connection gets a
    503 naming the limit and is closed; once a client leaves, /stats counts the refusal and the rest
    are served as before."""
    cluster = make_cluster(1, "http_connections_max=3")
    host, port = cluster[0].host, cluster[0].http_port
    request = b"GET /ping HTTP/1.1\r\nHost: x\r\n\r\n"
    held = []
    try:
        for _ in range(3):
            sock = socket.create_connection((host, port), timeout=10)
            held.append(sock)
            sock.sendall(request)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")
        with socket.create_connection((host, port), timeout=10) as extra:
            extra.sendall(request)
            answer = b""
            while chunk := extra.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), answer
        assert b"too many connections (the limit is 3)" in answer
        held.pop().close()
        deadline = time.monotonic() + 10
        while True:
            try:
                stats = http_json(cluster[0].url + "/stats")
                break
            except OSError:
                assert time.monotonic() < deadline, "the freed place never came back"
                time.sleep(0.05)
        assert stats["http_connections_refused_total"] == 1 and stats["http_connections"] >= 1
        for sock in held:
            sock.sendall(request)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 OK\r\n")
    finally:
        for sock in held:
            sock.close()


def test_local_node_ports_are_never_handed_out_twice_and_stay_below_the_ephemeral_range() -> None:
    """Two nodes of one cluster once got the same port on a busy machine: free_port now never repeats
    a port, and picks none an outgoing connection could take."""
    from dynastore.localcluster import free_port

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(0 < port < low for port in ports)
