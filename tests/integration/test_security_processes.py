"""The trust boundary on real processes: a node on a network address needs a secret, users and grants
decide every request when security is on (the 401/403/200 matrix, per permission and scope, on every
route family, at every node, across restarts), operator routes answer only this machine or a proof
of the secret, browsers cannot write cross-site, a node with another secret cannot join, a forged
context changes nothing, and a cluster without a secret shares the key it made."""

from __future__ import annotations

import base64
import json
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgpack
import pytest
from http_util import call, obj
from proc_util import run_dynastore as cli

from dynastore.core import context as ctxcodec
from dynastore.core.secret import CONTEXT, PEER, derive
from dynastore.core.versions import Context
from dynastore.localcluster import LocalCluster
from dynastore.net.framing import NONCE_BYTES, FrameDecoder, Hello, decode_hello, encode_finish, encode_hello, proof

MakeCluster = Callable[..., LocalCluster]


def ok(*args: str, env: dict[str, str] | None = None) -> str:
    """Run a CLI command that must succeed; its output."""
    result = cli(*args, env=env)
    assert result.returncode == 0, f"{' '.join(args)}: {result.stderr}"
    return result.stdout


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def secret_file(cluster: LocalCluster) -> str:
    return str(cluster.root / "cluster.secret")


def test_a_node_on_a_network_address_refuses_to_start_without_a_long_enough_secret(tmp_path: Path) -> None:
    """One line naming cluster_secret, a non-zero exit, and nothing served."""
    base = ["node", "--name", "n", "--host", "10.1.2.3", "--data-dir", str(tmp_path / "d")]
    result = cli(*base, timeout_s=30)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cluster_secret" in lines[0], result.stderr
    short = cli(*base, "--set", "cluster_secret=short", timeout_s=30)
    assert short.returncode != 0 and "cluster_secret must be at least 16 characters" in short.stderr


def test_with_security_on_every_route_family_answers_by_user_permission_and_scope(make_cluster: MakeCluster) -> None:
    """The matrix: no credentials 401 (with the Basic challenge), a wrong password 401, a user without
    the permission 403, with it 200; scopes any, BUCKET and TYPE/BUCKET; /ping stays open; a grant
    made at node0 holds at node2 within 5 s; users survive a restart of every node."""
    cluster = make_cluster(3)
    n0, n2 = cluster[0].url, cluster[2].url
    sf = secret_file(cluster)
    admin = ["--node", n0, "--secret-file", sf]
    for user in ("alice", "bob", "carol", "root"):
        result = cli("security", "add-user", user, "--password", f"pw-{user}", *admin)
        assert result.returncode == 0, result.stderr
    assert (
        cli("security", "grant", "riak_kv.get,riak_kv.list_keys", "--on", "b1", "--to", "alice", *admin).returncode == 0
    )
    assert cli("security", "grant", "riak_kv.put,riak_kv.delete", "--on", "any", "--to", "bob", *admin).returncode == 0
    assert cli("security", "grant", "riak_kv.get", "--on", "default/b3", "--to", "carol", *admin).returncode == 0
    assert cli("security", "grant", "riak_kv.index", "--on", "b1", "--to", "carol", *admin).returncode == 0
    assert cli("security", "grant", "dynastore.admin", "--on", "any", "--to", "root", *admin).returncode == 0
    enable = cli("security", "enable", *admin)
    assert enable.returncode == 0, enable.stderr
    cluster.set_secure(True)

    def status(method: str, url: str, who: str | None, body: bytes | None = None) -> int:
        headers = {} if who is None else basic(who, f"pw-{who}")
        if body is not None:
            headers["Content-Type"] = "text/plain"
        return call(method, url, body, headers)[0]

    # Every route family needs credentials; /ping does not.
    for base in (n0, n2):
        assert call("GET", base + "/ping")[0] == 200
        for url in (
            obj(base, "b1", "k"),
            f"{base}/riak/b1/k",
            f"{base}/types/default/buckets/b1/keys/k",
            f"{base}/buckets/b1/props",
            f"{base}/buckets?buckets=true",
            f"{base}/stats",
            f"{base}/ring",
            f"{base}/admin/status",
        ):
            code, headers, _ = call("GET", url)
            assert code == 401 and headers.get("WWW-Authenticate") == 'Basic realm="dynastore"', url
        assert call("GET", obj(base, "b1", "k"), headers=basic("alice", "wrong"))[0] == 401
    # bob may write anywhere but read nothing; alice reads and lists b1 only; carol reads default/b3.
    assert status("PUT", obj(n0, "b1", "k"), "bob", b"v") == 204
    assert status("PUT", obj(n0, "b3", "k"), "bob", b"v") == 204
    assert status("GET", obj(n0, "b1", "k"), "bob") == 403
    assert status("GET", obj(n0, "b1", "k"), "alice") == 200
    # A replica read (reads the ring-aware client coordinates itself) is a read like any other.
    assert call("GET", obj(n0, "b1", "k") + "?replica=true")[0] == 401
    assert status("GET", obj(n0, "b1", "k") + "?replica=true", "bob") == 403
    assert status("GET", obj(n0, "b1", "k") + "?replica=true", "alice") == 200
    assert status("GET", f"{n0}/riak/b1/k", "alice") == 200
    assert status("GET", f"{n0}/types/default/buckets/b1/keys/k", "alice") == 200
    assert status("GET", f"{n0}/buckets/b1/keys?keys=true", "alice") == 200
    assert status("GET", obj(n0, "b2", "k"), "alice") == 403
    assert status("PUT", obj(n0, "b1", "k"), "alice", b"x") == 403
    assert status("DELETE", obj(n0, "b1", "k"), "alice") == 403
    assert status("GET", f"{n0}/buckets/b1/props", "alice") == 403, "get_bucket was not granted"
    # A secondary-index query needs riak_kv.index on its bucket, whatever else is granted.
    assert status("GET", f"{n0}/buckets/b1/index/a_bin/x", "alice") == 403, "index was not granted"
    assert status("GET", f"{n0}/buckets/b1/index/a_bin/x", "carol") == 200
    assert status("GET", f"{n0}/types/default/buckets/b1/index/$bucket/b1", "carol") == 200
    assert status("GET", f"{n0}/buckets/b2/index/a_bin/x", "carol") == 403
    # One replica's copy of an object needs what reading it needs, not dynastore.status.
    assert status("GET", f"{n0}/admin/local/b1/k", "alice") in (200, 404)
    assert status("GET", f"{n0}/admin/local/b2/k", "alice") == 403
    assert status("GET", obj(n0, "b3", "k"), "carol") == 200
    assert status("GET", f"{n0}/types/default/buckets/b3/keys/k", "carol") == 200
    assert status("GET", obj(n0, "b1", "k"), "carol") == 403
    # dynastore.admin implies every permission, on every route family.
    for url in (obj(n0, "b2", "k"), f"{n0}/stats", f"{n0}/ring", f"{n0}/admin/status", f"{n0}/buckets?buckets=true"):
        assert status("GET", url, "root") in (200, 404), url
    assert status("PUT", f"{n0}/buckets/b1/props", "root", json.dumps({"props": {"n_val": 3}}).encode()) == 204
    assert status("DELETE", obj(n0, "b3", "k"), "bob") == 204
    # A grant made at node0 holds at node2 within 5 s.
    assert status("GET", f"{n2}/stats", "alice") == 403
    granted = cli(
        "security",
        "grant",
        "dynastore.status",
        "--on",
        "any",
        "--to",
        "alice",
        "--node",
        n0,
        "--user",
        "root",
        env={"DYNASTORE_PASSWORD": "pw-root"},
    )
    assert granted.returncode == 0, granted.stderr
    deadline = time.monotonic() + 5
    while status("GET", f"{n2}/stats", "alice") != 200:
        assert time.monotonic() < deadline, "the grant did not reach node2 in 5 s"
        time.sleep(0.1)
    # Revoked at node2, gone at node0.
    revoked = cli(
        "security", "revoke", "riak_kv.get", "--on", "b1", "--from", "alice", "--node", n2, "--secret-file", sf
    )
    assert revoked.returncode == 0, revoked.stderr
    cluster.wait(lambda: status("GET", obj(n0, "b1", "k"), "alice") == 403, 5, "the revocation to spread")
    # Users and grants survive a restart of every node.
    for node in cluster.nodes:
        node.stop()
    cluster.start()
    cluster.wait_ready(60)
    assert status("GET", f"{n0}/stats", "alice") == 200
    assert status("PUT", obj(n2, "b1", "k2"), "bob", b"v") == 204
    assert status("GET", obj(n0, "b1", "k"), "bob") == 403
    listed = ok("security", "list", "--json", "--node", n2, "--secret-file", sf)
    users = {u["name"]: u["grants"] for u in json.loads(listed)["users"]}
    assert set(users) == {"alice", "bob", "carol", "root"}
    assert {"permission": "dynastore.status", "on": "any"} in users["alice"]


def test_failed_logins_are_limited_per_client_address(make_cluster: MakeCluster) -> None:
    """Past the limit of failed logins in a minute, an address is refused (429) without a password check."""
    cluster = make_cluster(1, "auth_failures_per_minute_max=3")
    sf = secret_file(cluster)
    assert (
        cli(
            "security", "add-user", "eve", "--password", "right", "--node", cluster[0].url, "--secret-file", sf
        ).returncode
        == 0
    )
    assert cli("security", "enable", "--node", cluster[0].url, "--secret-file", sf).returncode == 0
    url = f"{cluster[0].url}/buckets/b/keys/k"
    codes = [call("GET", url, headers=basic("eve", f"wrong{i}"))[0] for i in range(5)]
    assert codes[:3] == [401, 401, 401] and codes[3:] == [429, 429]


def test_failed_logins_made_at_once_all_count_against_the_limit(make_cluster: MakeCluster) -> None:
    """Twenty wrong passwords sent together: at most the limit of them are checked, the rest get 429."""
    cluster = make_cluster(1, "auth_failures_per_minute_max=3")
    sf = secret_file(cluster)
    ok("security", "add-user", "eve", "--password", "right", "--node", cluster[0].url, "--secret-file", sf)
    ok("security", "enable", "--node", cluster[0].url, "--secret-file", sf)
    url = f"{cluster[0].url}/buckets/b/keys/k"
    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(lambda i: call("GET", url, headers=basic("eve", f"wrong{i}"))[0], range(20)))
    assert codes.count(401) <= 3 and codes.count(429) >= 17, codes


def test_browsers_cannot_write_cross_site_nor_reach_a_loopback_node_by_another_name(make_cluster: MakeCluster) -> None:
    """A PUT whose Origin is another site gets 403 and writes nothing; a Host that is not a loopback name
    gets 403 (no DNS rebinding); /ping is exempt; the node's own origin may write."""
    cluster = make_cluster(1, "n_val=1", "r=1", "w=1")
    url = cluster[0].url
    evil = call("PUT", obj(url, "b", "k"), b"v", {"Origin": "http://evil.example", "Content-Type": "text/plain"})
    assert evil[0] == 403
    assert call("GET", obj(url, "b", "k"))[0] == 404
    host = url.removeprefix("http://")
    assert call("PUT", obj(url, "b", "k"), b"v", {"Origin": f"http://{host}", "Content-Type": "text/plain"})[0] == 204
    rebound = call("GET", obj(url, "b", "k"), headers={"Host": "attacker.example"})
    assert rebound[0] == 403
    assert call("GET", f"{url}/ping", headers={"Host": "attacker.example"})[0] == 200


def test_a_node_with_another_secret_cannot_join_and_is_never_listed(tmp_path: Path) -> None:
    """`cluster join` fails with a reason naming the secret; the cluster's members never include it."""
    good = LocalCluster(tmp_path / "good", 1)
    stranger = LocalCluster(tmp_path / "stranger", 1)
    stranger.nodes[0].name = "intruder"
    try:
        good.start()
        stranger.start()
        good.wait_ready(60)
        stranger.wait_ready(60)
        result = cli(
            "cluster",
            "join",
            good[0].peer_address,
            "--node",
            stranger[0].url,
            "--secret-file",
            str(stranger.root / "cluster.secret"),
        )
        assert result.returncode != 0
        assert "secret" in result.stderr, result.stderr
        members = [m["name"] for m in good[0].status()["members"]]
        assert members == ["node0"]
        assert stranger.stats(stranger[0])["peer_auth_failures_total"] >= 1
    finally:
        good.close()
        stranger.close()


def test_a_replayed_peer_handshake_is_refused_by_a_real_node(make_cluster: MakeCluster) -> None:
    """We perform one genuine handshake with the secret, then replay it byte for byte: refused and counted."""
    cluster = make_cluster(1)
    assert cluster.secret is not None
    key = derive(cluster.secret.encode(), PEER)
    ours = Hello("dynastore", "node9", "127.0.0.1", 1, bytes(range(NONCE_BYTES)))
    with socket.create_connection(("127.0.0.1", cluster[0].peer_port), timeout=5) as first:
        first.sendall(encode_hello(ours))
        decoder = FrameDecoder(1 << 16)
        frames: list[bytes] = []
        while not frames:
            frames = decoder.feed(first.recv(4096))
        theirs, _ = decode_hello(frames[0], "dynastore")
        finish = encode_finish(proof(key, "client", ours, theirs))
        first.sendall(finish)
    before = cluster.stats(cluster[0])["peer_auth_failures_total"]
    with socket.create_connection(("127.0.0.1", cluster[0].peer_port), timeout=5) as replay:
        replay.sendall(encode_hello(ours) + finish)
        replay.settimeout(5)
        with pytest.raises((ConnectionError, TimeoutError)):
            while replay.recv(4096):
                pass
            raise ConnectionError("closed")
    cluster.wait(lambda: cluster.stats(cluster[0])["peer_auth_failures_total"] > before, 5, "the replay to be counted")


def test_a_forged_context_naming_this_nodes_versions_beyond_its_lease_gets_400_and_changes_nothing(
    make_cluster: MakeCluster,
) -> None:
    """Made with the right key (the worst case: a leaked secret) but claiming counters the node never
    leased: refused, and the node goes on accepting writes."""
    cluster = make_cluster(1, "n_val=1", "r=1", "w=1")
    url = cluster[0].url
    assert cluster.secret is not None
    actor = cluster.stats(cluster[0])["actor"].encode()
    context_key = derive(cluster.secret.encode(), CONTEXT)
    forged = ctxcodec.encode(Context(((actor, (1 << 63) - 2),)), context_key, b"b", b"k")
    code, _, body = call("PUT", obj(url, "b", "k"), b"v", {"X-Riak-Vclock": forged, "Content-Type": "text/plain"})
    assert code == 400 and b"never wrote" in body
    assert call("GET", obj(url, "b", "k"))[0] == 404
    for i in range(3):
        assert call("PUT", obj(url, "b", f"k{i}"), b"v", {"Content-Type": "text/plain"})[0] == 204


def test_a_loopback_cluster_without_a_secret_shares_the_key_it_made_across_nodes_and_restarts(
    tmp_path: Path,
) -> None:
    """No setting at all: node0 makes a random key with its cluster, node1 joins and receives it, and a
    context from node0 is valid at node1, also after both restart."""
    cluster = LocalCluster(tmp_path / "open", 2, overrides=("n_val=2",), make_secret=False)
    try:
        cluster.start()
        cluster.wait_ready(60)
        url0, url1 = cluster[0].url, cluster[1].url
        assert call("PUT", obj(url0, "b", "k"), b"one", {"Content-Type": "text/plain"})[0] == 204
        vclock = call("GET", obj(url0, "b", "k"))[1]["X-Riak-Vclock"]
        code, _, _ = call("PUT", obj(url1, "b", "k"), b"two", {"X-Riak-Vclock": vclock, "Content-Type": "text/plain"})
        assert code == 204
        for node in cluster.nodes:
            node.stop()
        cluster.start()
        cluster.wait_ready(60)
        vclock = call("GET", obj(url1, "b", "k"))[1]["X-Riak-Vclock"]
        assert call("GET", obj(url1, "b", "k"))[2] == b"two"
        code, _, _ = call("PUT", obj(url0, "b", "k"), b"three", {"X-Riak-Vclock": vclock, "Content-Type": "text/plain"})
        assert code == 204
        assert call("GET", obj(url1, "b", "k"))[2] == b"three"
    finally:
        cluster.close()


def test_a_data_directory_of_the_previous_format_is_opened_and_its_data_kept(tmp_path: Path) -> None:
    """A node's cluster state written in format 1 (no security, no cluster key, members without their
    TLS flag), and no secondary index yet: the node opens it, writes it back in the new format, serves
    the data it held, and indexes what it is given from then on."""
    from dynastore.core import membership
    from dynastore.storage.base import Op
    from dynastore.storage.lmdb_engine import LmdbEngine

    cluster = LocalCluster(tmp_path / "old", 1, overrides=("n_val=1", "r=1", "w=1"))
    try:
        cluster.start()
        cluster.wait_ready(60)
        assert call("PUT", obj(cluster[0].url, "b", "k"), b"kept", {"Content-Type": "text/plain"})[0] == 204
        cluster[0].stop()
        engine = LmdbEngine(cluster[0].data_dir / "store")
        try:
            current = msgpack.unpackb(engine.get("meta", b"cluster") or b"", raw=False)
            old = [1, current[1], [m[:7] for m in current[2]], current[3], current[4]]
            engine.write(
                [
                    Op("meta", b"cluster", msgpack.packb(old, use_bin_type=True)),
                    Op("meta", b"cluster_key", None),
                    Op("meta", b"index_format", None),
                ]
            )
        finally:
            engine.close()
        cluster[0].start()
        cluster.wait_ready(60)
        assert call("GET", obj(cluster[0].url, "b", "k"))[2] == b"kept"
        tagged = {"Content-Type": "text/plain", "X-Riak-Index-t_bin": "new"}
        assert call("PUT", obj(cluster[0].url, "b", "k2"), b"indexed", tagged)[0] == 204
        assert json.loads(call("GET", f"{cluster[0].url}/buckets/b/index/t_bin/new")[2]) == {"keys": ["k2"]}
        cluster[0].stop()
        engine = LmdbEngine(cluster[0].data_dir / "store")
        try:
            assert msgpack.unpackb(engine.get("meta", b"cluster") or b"", raw=False)[0] == membership.STATE_FORMAT
            assert engine.get("meta", b"index_format") == (1).to_bytes(4, "big")
        finally:
            engine.close()
    finally:
        cluster.close()


def test_with_security_on_a_node_on_a_network_address_refuses_to_start_without_tls(tmp_path: Path) -> None:
    """Passwords would cross the network in clear: one line naming the TLS settings, a non-zero exit."""
    secret = tmp_path / "secret"
    secret.write_text("a-secret-of-enough-length\n")
    result = cli(
        "node",
        "--name",
        "n",
        "--host",
        "10.1.2.3",
        "--data-dir",
        str(tmp_path / "d"),
        "--set",
        f"cluster_secret_file={secret}",
        "--set",
        "security_enabled=true",
        timeout_s=30,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "tls_cert_file" in lines[0], result.stderr


def test_the_secret_is_rotated_by_three_rolling_restarts_without_the_cluster_stopping(tmp_path: Path) -> None:
    """Old secret with the new one accepted, then the new one with the old accepted, then the new one
    alone: at every step the nodes keep talking (a write reaches every replica) and a context made by
    one node is taken by the other."""
    old, new = tmp_path / "old.secret", tmp_path / "new.secret"
    old.write_text("the-old-cluster-secret\n")
    new.write_text("the-new-cluster-secret\n")
    base = ("n_val=2", "r=2", "w=2", f"cluster_secret_file={old}")
    cluster = LocalCluster(tmp_path / "c", 2, overrides=base)
    steps = [
        (f"cluster_secret_file={old}", "cluster_secret_accepted=the-new-cluster-secret"),
        (f"cluster_secret_file={new}", "cluster_secret_accepted=the-old-cluster-secret"),
        (f"cluster_secret_file={new}",),
    ]
    try:
        cluster.start()
        cluster.wait_ready(60)

        def round_trip(tag: str) -> None:
            # A new key written at node0 is read at node1, whose context node0 then takes for an update.
            writer, reader = cluster[0].url, cluster[1].url
            assert call("PUT", obj(writer, "b", tag), b"one", {"Content-Type": "text/plain"})[0] == 204
            code, headers, body = call("GET", obj(reader, "b", tag))
            assert code == 200 and body == b"one", (tag, code, body)
            update = {"X-Riak-Vclock": headers["X-Riak-Vclock"], "Content-Type": "text/plain"}
            assert call("PUT", obj(writer, "b", tag), b"two", update)[0] == 204, tag
            assert call("GET", obj(reader, "b", tag))[2] == b"two", tag

        round_trip("before")
        for step, settings in enumerate(steps):
            for node in cluster.nodes:
                node.overrides = ("n_val=2", "r=2", "w=2", *settings)
                node.stop()
                node.start()
                cluster.wait_ready(60)
                round_trip(f"step{step}-{node.name}")
    finally:
        cluster.close()
