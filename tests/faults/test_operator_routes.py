"""Operator routes with security off, seen from another host: only this machine's clients or a proof of
the cluster secret may change membership (a node in its own network namespace, the test on the bridge)."""

from __future__ import annotations

import json
from collections.abc import Callable

from http_util import call

from dynastore import localnet
from dynastore.api.auth import PROOF_HEADER, proof
from dynastore.core.secret import ADMIN, derive
from dynastore.localcluster import LocalCluster, secret_proof

NetCluster = Callable[..., tuple[localnet.PrivateNet, LocalCluster]]


def test_with_security_off_operator_routes_answer_only_this_machine_or_a_proof_of_the_secret(
    net_cluster: NetCluster,
) -> None:
    """A client on another address (the bridge of a private network) gets 403 for /admin/leave; the same
    request proved with the cluster secret is served; reads stay open."""
    _, cluster = net_cluster(1)
    url = cluster[0].url
    code, _, body = call("POST", f"{url}/admin/remove?node=nobody")
    assert code == 403 and b"operator" in body
    code, _, _ = call("POST", f"{url}/admin/leave")
    assert code == 403
    assert call("GET", f"{url}/admin/status")[0] == 200
    assert cluster.secret is not None
    target = "/admin/remove?node=nobody"
    proved = call("POST", url + target, b"", secret_proof(url, "POST", target, b"", cluster.secret))
    assert proved[0] == 400 and b"not a member" in proved[2], proved


def test_a_proof_of_the_secret_is_good_once_and_a_flood_of_challenges_evicts_nothing(net_cluster: NetCluster) -> None:
    """Nonces cost the node nothing to hand out: 3,000 asked by anyone leave an operator's earlier one
    usable; the same proof sent again is refused."""
    _, cluster = net_cluster(1)
    url = cluster[0].url
    assert cluster.secret is not None
    nonce = bytes.fromhex(json.loads(call("GET", f"{url}/admin/challenge")[2])["nonce"])
    for _ in range(3000):
        assert call("GET", f"{url}/admin/challenge")[0] == 200
    target = "/admin/remove?node=nobody"
    mac = proof(derive(cluster.secret.encode(), ADMIN), nonce, "POST", target, b"")
    header = {PROOF_HEADER: f"{nonce.hex()}:{mac.hex()}"}
    code, _, body = call("POST", url + target, b"", header)
    assert code == 400 and b"not a member" in body, (code, body)
    replayed = call("POST", url + target, b"", header)
    assert replayed[0] == 403, replayed
