"""Hostile and oversized input against real node processes: garbage, truncated frames and huge length
prefixes at a node's peer port (before the handshake and as a peer that holds the secret), a key whose
siblings outgrow the per-key bound, a key larger than a frame travelling as fragments, and a node's
anonymous memory while clients read a gigabyte, hold 2,000 half-sent bodies and pipeline 100,000
requests."""

from __future__ import annotations

import http.client
import json
import os
import random
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import msgpack
from http_util import call, get, obj, put

from dynastore.core import messages
from dynastore.core.objects import Content
from dynastore.core.secret import PEER, derive
from dynastore.core.versions import Clock, Dot, Versioned
from dynastore.localcluster import LocalCluster, NodeProc
from dynastore.net.framing import (
    FRAGMENT,
    NONCE_BYTES,
    TO_LISTENER,
    FrameDecoder,
    Hello,
    Sealer,
    decode_hello,
    encode_finish,
    encode_hello,
    encode_payload,
    proof,
    session_key,
)

MakeCluster = Callable[..., LocalCluster]
MiB = 1024 * 1024
MB = 1_000_000


# --- The peer port ---------------------------------------------------------------------------------


def _closed_by_node(sock: socket.socket, timeout_s: float = 10.0) -> bool:
    """Read until the node closes the connection (True) or `timeout_s` passes (False)."""
    sock.settimeout(timeout_s)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except ConnectionError:
        return True
    except TimeoutError:
        return False
    return False


def _raw(node: NodeProc, data: bytes, *, close_after: bool = False) -> bool:
    """Send `data` to the peer port before any handshake; True when the node closed the link."""
    with socket.create_connection(("127.0.0.1", node.peer_port), timeout=5) as sock:
        try:
            sock.sendall(data)
        except ConnectionError:
            return True
        if close_after:
            return True
        return _closed_by_node(sock)


@contextmanager
def _peer(node: NodeProc, secret: str, name: str) -> Iterator[tuple[socket.socket, Sealer]]:
    """A link to `node` that passed the handshake with the cluster secret, claiming to be `name`."""
    key = derive(secret.encode(), PEER)
    ours = Hello("dynastore", name, "127.0.0.1", 1, os.urandom(NONCE_BYTES))
    with socket.create_connection(("127.0.0.1", node.peer_port), timeout=5) as sock:
        sock.sendall(encode_hello(ours))
        decoder = FrameDecoder(1 << 16)
        frames: list[bytes] = []
        while not frames:
            data = sock.recv(4096)
            assert data, "the node closed the link during the handshake"
            frames = decoder.feed(data)
        theirs, _ = decode_hello(frames[0], "dynastore")
        sock.sendall(encode_finish(proof(key, "client", ours, theirs)))
        yield sock, Sealer(session_key(key, ours, theirs), TO_LISTENER)


def _versioned(actor: bytes, value: bytes) -> Versioned:
    return Versioned(Clock(((actor, 1, 5),)), ((Dot(actor, 1), Content(value)),))


def _hostile_payloads() -> list[tuple[str, bytes]]:
    """Sealed-frame payloads a peer with the secret might send: not msgpack, wrong shapes, unknown
    types, and messages that decode but carry what no honest node sends."""
    rng = random.Random(16)
    v = _versioned(b"node9.1", b"x")
    bent = [
        messages.ReplicaPut(7, b"b", b"k", v, "", False),
        messages.ListKeys(7, b"b", -1, b""),
        messages.ListKeys(7, None, 2**40, b"\xff" * 600),
        messages.HandoffPull(7, b"t", -1, b"", False),
        messages.TreeRequest(7, -1, 3, 0, (0,)),
        messages.SegmentRequest(7, 1 << 30, 3, (0,)),
        messages.ObjectsRequest(7, (b"\x00\x00",)),
        messages.HintDelivery(7, (messages.HintItem(b"", b"k", v),), (False,)),
        messages.HintDelivery(7, (messages.HintItem(b"b", b"k", v),), ()),
        messages.GossipState(b"\x93\x01\x02", True),
        # Replies to requests never made.
        messages.ReplicaGetReply(123456, v),
        messages.ListKeysReply(99, (b"a", b"b"), b"b", True),
        messages.ObjectsReply(5, (messages.HintItem(b"b", b"k", v),), True, 1),
    ]
    payloads = [
        ("random bytes", rng.randbytes(3000)),
        ("not a list", msgpack.packb({"a": 1})),
        ("unknown type", msgpack.packb([250, 1, 2, 3])),
        ("wrong arity", msgpack.packb([5, 1])),
        ("empty", b""),
        ("fragment of a message larger than any", bytes([FRAGMENT, 1]) + b"\x00" * 60000),
        ("malformed fragment", bytes([FRAGMENT, 7]) + b"x"),
        ("deep nesting", b"\x91" * 100_000 + b"\x00"),
    ]
    payloads += [(type(msg).__name__, encode_payload(msg)) for msg in bent]
    return payloads


def _serves_and_replicates(cluster: LocalCluster, tag: str) -> None:
    """A write through each node is acknowledged by all three replicas and reads back at every node."""
    for writer in cluster.nodes:
        status, _, body = put(writer.url, "after", f"{tag}-{writer.name}", b"fine", query="w=3")
        assert status == 204, (writer.name, status, body)
    for reader in cluster.nodes:
        for writer in cluster.nodes:
            status, _, body = get(reader.url, "after", f"{tag}-{writer.name}", query="r=3")
            assert (status, body) == (200, b"fine"), (reader.name, writer.name, status, body)


def test_garbage_truncated_frames_and_huge_lengths_at_a_peer_port_leave_every_node_alive_serving_and_replicating(
    make_cluster: MakeCluster,
) -> None:
    """Before the handshake: random bytes, a 4 GiB and a 1 MiB length prefix, a truncated frame, a
    hello of another protocol, silence. As a peer holding the secret (under a member's name and a
    stranger's): sealed garbage, unknown types, bent messages, replies to requests never made, an
    unsealed huge frame, a frame whose MAC is wrong. Each costs only its own link; the node counts it,
    and the cluster goes on serving and replicating. A stranger with the secret changes no data."""
    cluster = make_cluster(3, "connect_timeout_ms=1000")
    assert cluster.secret is not None
    target = cluster[0]
    _serves_and_replicates(cluster, "before")
    errors_before = cluster.stats(target)["peer_protocol_errors_total"]

    rng = random.Random(7)
    assert _raw(target, rng.randbytes(65536))
    assert _raw(target, b"\xff\xff\xff\xff" + b"x" * 100)
    assert _raw(target, (1 * MiB).to_bytes(4, "big") + b"\x00" * 8192)
    assert _raw(target, (100).to_bytes(4, "big") + b"\x00" * 10, close_after=True)
    other = Hello("dynastore", "node7", "127.0.0.1", 1, b"\x00" * NONCE_BYTES, version=1)
    assert _raw(target, encode_hello(other))
    # A link that never says hello is closed after connect_timeout_ms.
    with socket.create_connection(("127.0.0.1", target.peer_port), timeout=5) as silent:
        assert _closed_by_node(silent, 10.0)

    # As node1 (a member's name, with the secret): what does not decode or pass its checks costs the
    # link; what is harmless is kept (stray replies, a state that is no state, a fragment in progress).
    kept = set()
    for what, payload in _hostile_payloads():
        with _peer(target, cluster.secret, "node1") as (sock, sealer):
            sock.sendall(sealer.seal(payload))
            if not _closed_by_node(sock, 2.0):
                kept.add(what)
    harmless = {
        "ReplicaGetReply",
        "ListKeysReply",
        "ObjectsReply",
        "GossipState",
        "fragment of a message larger than any",
    }
    assert kept <= harmless, kept
    for name in ("node1", "node9"):
        with _peer(target, cluster.secret, name) as (sock, sealer):
            sock.sendall(sealer.seal(b"\x00garbage"))
            assert _closed_by_node(sock), "garbage from " + name
        with _peer(target, cluster.secret, name) as (sock, sealer):
            sock.sendall((64 * MiB).to_bytes(4, "big") + b"\x00" * 4096)
            assert _closed_by_node(sock), "an over-long frame after the handshake"
        with _peer(target, cluster.secret, name) as (sock, sealer):
            frame = bytearray(sealer.seal(encode_payload(messages.Ping(1))))
            frame[-1] ^= 1
            sock.sendall(bytes(frame))
            assert _closed_by_node(sock), "a frame whose MAC does not verify"
        with _peer(target, cluster.secret, name) as (sock, sealer):
            sock.sendall(sealer.seal(encode_payload(messages.Ping(1)))[:-5])
    dropped = len(_hostile_payloads()) - len(kept) + 6

    # An authenticated non-member's well-formed write changes nothing.
    with _peer(target, cluster.secret, "node9") as (sock, sealer):
        stolen = messages.ReplicaPut(1, b"after", b"stolen", _versioned(b"node9.1", b"mine"), None, False)
        sock.sendall(sealer.seal(encode_payload(stolen)))
        time.sleep(0.5)
    assert get(target.url, "after", "stolen", query="r=3")[0] == 404

    assert all(node.alive for node in cluster.nodes), cluster.logs()
    stats = cluster.stats(target)
    assert stats["peer_protocol_errors_total"] - errors_before >= dropped, stats
    cluster.wait_ready(30)
    _serves_and_replicates(cluster, "after")
    assert "Traceback" not in target.log_tail(100000), target.log_tail(200)


# --- Bytes per key and frames ----------------------------------------------------------------------


def test_blind_writes_to_one_key_get_204_until_the_per_key_bound_then_413_and_never_503(
    make_cluster: MakeCluster,
) -> None:
    """Seventy blind 1 MiB writes to one key through a 3-node cluster at the default bounds: every
    answer is 204 until the siblings would pass key_siblings_bytes_max (16 MiB), then 413; never a
    503, every link stays up, and a read returns the siblings that were acknowledged."""
    cluster = make_cluster(3)
    urls = [node.url for node in cluster.nodes]
    statuses = []
    for i in range(70):
        status, _, body = put(urls[i % 3], "big", "one", bytes([i]) * MB, content_type="application/octet-stream")
        statuses.append(status)
        assert status in (204, 413), (i, status, body)
    accepted = statuses.count(204)
    assert statuses == [204] * accepted + [413] * (70 - accepted), statuses
    assert 10 <= accepted <= 16, statuses
    status, _, body = call("GET", obj(urls[1], "big", "one", "r=3"), headers={"Accept": "multipart/mixed"})
    assert status == 300, status
    assert body.count(b"Content-Type: application/octet-stream") == accepted
    for node in cluster.nodes:
        stats = cluster.stats(node)
        assert stats["peer_protocol_errors_total"] == 0, (node.name, stats)
    assert cluster.ready()


def _preflist(base: str, bucket: str, key: str) -> list[dict[str, object]]:
    """The key's primaries, and the fallbacks standing in for those the node sees down."""
    status, _, body = call("GET", obj(base, bucket, key) + "/preflist")
    assert status == 200, body
    entries: list[dict[str, object]] = json.loads(body)["preflist"]
    return entries


def _primaries(base: str, bucket: str, key: str) -> list[str]:
    return [str(entry["node"]) for entry in _preflist(base, bucket, key) if entry["primary"]]


def _local_values(node: NodeProc, bucket: str, key: str) -> list[str] | None:
    status, _, body = call("GET", f"{node.url}/admin/local/{bucket}/{key}")
    if status == 404:
        return None
    assert status == 200, body
    return sorted(s["value"] for s in json.loads(body)["siblings"] if not s["deleted"])


def test_a_key_larger_than_a_frame_replicates_through_fragments_and_reaches_a_restarted_node_by_hints(
    make_cluster: MakeCluster,
) -> None:
    """With frame_bytes_max=64 KiB and n_val 2, three 1 MiB siblings (3 MiB, ~48 frames' worth) are
    written while one primary is down: the third node holds them as a hint, hands them over once the
    primary is back, and the primary's own copy then has all three. No link is ever dropped for the
    size of what it carries."""
    cluster = make_cluster(3, "frame_bytes_max=65536")
    base = cluster[0].url
    status, _, body = call(
        "PUT", f"{base}/buckets/frag/props", b'{"props": {"n_val": 2}}', {"Content-Type": "application/json"}
    )
    assert status == 204, body
    status, _, body = put(base, "frag", "warmup", b"w" * MB, query="w=2")
    assert status == 204, body
    owners = _primaries(base, "frag", "big")
    byname = {node.name: node for node in cluster.nodes}
    victim, survivor = byname[owners[1]], byname[owners[0]]
    fallback = next(node for node in cluster.nodes if node.name not in owners)
    victim.stop()
    cluster.wait(lambda: len(_preflist(survivor.url, "frag", "big")) == 3, 30, f"{victim.name} to be seen down")
    values = [chr(65 + i) * MB for i in range(3)]
    for value in values:
        status, _, body = put(survivor.url, "frag", "big", value.encode(), query="w=2")
        assert status == 204, (status, body)
    assert cluster.stats(fallback)["hints_pending"] >= 1
    victim.start()
    cluster.wait_ready(60)
    cluster.wait(lambda: cluster.stats(fallback)["hints_pending"] == 0, 60, "the hint to be delivered")
    assert _local_values(victim, "frag", "big") == values
    for node in cluster.nodes:
        assert cluster.stats(node)["peer_protocol_errors_total"] == 0, node.name


# --- Memory ----------------------------------------------------------------------------------------


def _rss_anon_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon")


class _Peak:
    """The highest RssAnon of a process, sampled every 20 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, _rss_anon_kib(self.pid))
            self._stop.wait(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak_kib


def _pipeline(url_host: str, port: int, count: int, result: dict[str, int]) -> None:
    """Send `count` pipelined pings in one go from one thread while this one reads the answers."""
    request = b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n"
    with socket.create_connection((url_host, port), timeout=60) as sock:
        sender = threading.Thread(target=lambda: sock.sendall(request * count), daemon=True)
        sender.start()
        marker = b"HTTP/1.1 200 "
        seen, tail = 0, b""
        while seen < count:
            data = sock.recv(1 << 20)
            if not data:
                break
            # A match in `tail + data` ends inside `data`: the tail is shorter than the marker.
            joined = tail + data
            seen += joined.count(marker)
            tail = joined[-(len(marker) - 1) :]
        sender.join(60)
        result["answered"] = seen


def _half_bodies(host: str, port: int, count: int, held: list[socket.socket]) -> None:
    """`count` connections that each announce a 1 MiB body, send half of it, and stop."""
    head = b"PUT /buckets/half/keys/k HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n"
    head += b"Content-Length: %d\r\n\r\n" % MiB
    half = b"h" * (MiB // 2)
    for _ in range(count):
        try:
            sock = socket.create_connection((host, port), timeout=5)
        except OSError:
            continue
        held.append(sock)
        try:
            sock.sendall(head + half)
        except OSError:
            continue


def test_a_nodes_anonymous_memory_stays_under_512_mib_reading_1_gb_while_2000_bodies_stall_and_100000_requests_pipeline(
    make_cluster: MakeCluster,
) -> None:
    """At the default bounds (n_val 1 keeps the disk small): 1,000 distinct 1 MB objects written, then
    read back by one client while 2,000 connections each send half of a 1 MiB body and stop, and
    another pipelines 100,000 requests on one connection. The node's RssAnon (its heap, not LMDB's
    mapped pages), sampled every 20 ms, never reaches 512 MiB; every read and every ping is answered."""
    cluster = make_cluster(1, "n_val=1", "r=1", "w=1")
    node = cluster[0]
    assert node.proc is not None
    host, port = node.host, node.http_port
    count, size = 1000, 1_000_000

    def value(i: int) -> bytes:
        return i.to_bytes(4, "big") * (size // 4)

    def writer(part: int) -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        for i in range(part, count, 4):
            conn.request(
                "PUT", f"/buckets/mem/keys/k{i}", body=value(i), headers={"Content-Type": "application/octet-stream"}
            )
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 204, resp.status
        conn.close()

    writers = [threading.Thread(target=writer, args=(part,)) for part in range(4)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join(300)
    peak = _Peak(node.proc.pid)
    held: list[socket.socket] = []
    pinged: dict[str, int] = {}
    stallers = [threading.Thread(target=_half_bodies, args=(host, port, 500, held)) for _ in range(4)]
    pipeliner = threading.Thread(target=_pipeline, args=(host, port, 100_000, pinged))
    try:
        for thread in (*stallers, pipeliner):
            thread.start()
        conn = http.client.HTTPConnection(host, port, timeout=60)
        for i in range(count):
            conn.request("GET", f"/buckets/mem/keys/k{i}")
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200 and body == value(i), (i, resp.status, len(body))
        conn.close()
        for thread in (*stallers, pipeliner):
            thread.join(300)
        assert pinged.get("answered") == 100_000, pinged
        assert len(held) >= 1900, len(held)
        assert node.alive
        status, _, _ = call("GET", f"{node.url}/ping")
        assert status == 200
    finally:
        peak_kib = peak.stop()
        for sock in held:
            sock.close()
    print(f"peak RssAnon {peak_kib / 1024:.0f} MiB")
    assert peak_kib < 512 * 1024, f"peak RssAnon {peak_kib / 1024:.0f} MiB"


# --- Listing ---------------------------------------------------------------------------------------


def _json_objects(body: bytes) -> list[dict[str, object]]:
    """The JSON objects of a streamed listing, one after another."""
    decoder, text, out, at = json.JSONDecoder(), body.decode(), [], 0
    while at < len(text):
        found, at = decoder.raw_decode(text, at)
        out.append(found)
    return out


def test_a_streamed_listing_that_times_out_answers_200_with_the_keys_found_and_an_error_timeout_object(
    make_cluster: MakeCluster,
) -> None:
    """n_val 1 so that node1's partitions are listed by node1 alone; node1 is SIGSTOPped just before the
    listing (still judged healthy): the stream is a 200 with the keys listed before it and ends with
    `{"error": "timeout"}`, as Riak's does; keys=true answers 503; once node1 runs again, both list
    every key."""
    cluster = make_cluster(3)
    base = cluster[0].url
    status, _, body = call(
        "PUT", f"{base}/buckets/l/props", b'{"props": {"n_val": 1}}', {"Content-Type": "application/json"}
    )
    assert status == 204, body
    names = {f"k{i}" for i in range(120)}
    for name in names:
        assert put(base, "l", name, b"v", query="w=1")[0] == 204
    cluster[1].signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        status, _, body = call("GET", f"{base}/buckets/l/keys?keys=stream&timeout=1500", timeout_s=30)
        took = time.monotonic() - started
        assert status == 200, (status, body)
        parts = _json_objects(body)
        assert parts[-1] == {"error": "timeout"}, parts[-3:]
        listed = {key for part in parts[:-1] for key in part["keys"]}  # type: ignore[attr-defined]
        assert listed < names, len(listed)
        assert took < 10, took
        status, _, body = call("GET", f"{base}/buckets/l/keys?keys=true&timeout=1500", timeout_s=30)
        assert status == 503, (status, body)
    finally:
        cluster[1].signal(signal.SIGCONT)
    cluster.wait_ready(30)
    status, _, body = call("GET", f"{base}/buckets/l/keys?keys=stream", timeout_s=30)
    assert status == 200 and {k for part in _json_objects(body) for k in part["keys"]} == names  # type: ignore[attr-defined]
    status, _, body = call("GET", f"{base}/buckets/l/keys?keys=true", timeout_s=30)
    assert status == 200 and set(json.loads(body)["keys"]) == names
