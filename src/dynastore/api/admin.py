"""Cluster administration over HTTP (`/admin/...`), used by `dynastore cluster ...` and by tests.

Not part of Riak's API. Every route validates its input like the rest of the API: a 4xx with a
plain-text reason for anything malformed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynastore.api.server import Request, Response
from dynastore.core import merkle, objects, placement
from dynastore.core.messages import Failure
from dynastore.core.node import ClientJoin, ClientLeave, ClientRemove

if TYPE_CHECKING:
    from dynastore.api.http import Answer, Api


def _json(data: Any, status: int = 200) -> Response:
    import json

    return Response(status=status, text=json.dumps(data), content_type="application/json")


def _text(status: int, body: str) -> Response:
    return Response(status=status, text=body + "\n")


def status(api: Api) -> dict[str, Any]:
    core = api.runtime.core
    assert core is not None
    now = api.runtime.clock.now_ms()
    counts = core.ring.counts()
    members = []
    for m in core.cluster.members:
        up = m.name == core.name or core.detector.is_up(m.name, now)
        members.append(
            {
                "name": m.name,
                "host": m.host,
                "peer_port": m.peer_port,
                "http_port": m.http_port,
                "status": m.status,
                "weight": m.weight,
                "reachable": up,
                "phi": round(core.detector.phi(m.name, now), 2) if m.name != core.name else 0.0,
                "partitions": counts.get(m.name, 0),
            }
        )
    ring = core.cluster.ring
    transition = None
    if ring.next_owners is not None:
        n_vals = core.n_vals()
        switched = sum(1 for p in range(len(ring.owners)) if all(placement.switched(ring, p, n) for n in n_vals))
        pending = placement.transfers(core.cluster, n_vals)
        transition = {
            "partitions_total": len(ring.owners),
            "partitions_switched": switched,
            "transfers_pending": len(pending),
            "receivers": sorted({t.receiver for t in pending}),
        }
    return {
        "node": core.name,
        "cluster": core.cluster.cluster,
        "ring_version": ring.version,
        "claimant": core.cluster.claimant(),
        "members": members,
        "hints_pending": core.hints_pending,
        "transition": transition,
        "receiving": core.transfer_progress(),
        "anti_entropy": {
            "exchanges": core.aae.stats.exchanges,
            "keys_repaired": core.aae.stats.keys_repaired,
            "tree_builds": core.aae.stats.tree_builds,
            "trees_ready": sum(1 for t in core.aae.trees.values() if t.ready),
            "trees": len(core.aae.trees),
            "last_exchange_age_s": {
                str(p): round((now - t) / 1000, 1) for p, t in sorted(core.aae.stats.last_exchange_ms.items())
            },
            "background_rate_per_s": round(core.controller.rate_per_s, 1),
            "background_deferred": core.controller.deferred,
            "foreground_p99_ms": core.controller.p99(now),
            "background_latency_limit_ms": round(core.controller.limit_ms(now), 1),
        },
    }


async def handle(api: Api, request: Request, rest: list[bytes]) -> Answer:
    from dynastore.api.http import BadRequest

    core = api.runtime.core
    assert core is not None
    method = request.method
    if rest == [b"status"] and method == "GET":
        return _json(status(api))
    if len(rest) == 3 and rest[0] == b"local" and method == "GET":
        # This node's own copy of a key, without any quorum.
        bucket, key = rest[1], rest[2]
        api.check_names(bucket, key)
        obj = core.local_copy(bucket, key)
        if obj is None:
            return _text(404, "no local copy")
        return _json(
            {
                "summary": merkle.summary(obj).hex(),
                "clock": [[a.decode(errors="replace"), c] for a, c, _ in obj.clock.entries],
                "siblings": [
                    {
                        "vtag": objects.vtag(dot),
                        "dot": [dot.actor.decode(errors="replace"), dot.counter],
                        "value": content.value.decode(errors="replace"),
                        "deleted": content.deleted,
                        "content_type": content.content_type,
                    }
                    for dot, content in obj.siblings
                ],
            }
        )
    if rest == [b"aae"] and method == "GET":
        # Every tree's root, and whether this node is a primary of its partition: replicas of one
        # partition must show equal roots once converged.
        ring = core.cluster.ring
        trees = {}
        for (partition, n_val), tree in sorted(core.aae.trees.items()):
            primaries = placement.placement(ring, partition, n_val).plist.primary_nodes
            trees[f"{partition}/{n_val}"] = {
                "root": tree.root().hex() if tree.ready else None,
                "primary": core.name in primaries,
            }
        return _json({"node": core.name, "trees": trees})
    if rest == [b"join"] and method == "POST":
        seed = request.query.get("seed", "")
        host, _, port = seed.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise BadRequest("seed must be host:peer-port")
        response = await api.runtime.request(ClientJoin(host, int(port)))
        if isinstance(response, Failure):
            return api.failure(response)
        return _json({"joined": seed})
    if rest == [b"leave"] and method == "POST":
        response = await api.runtime.request(ClientLeave())
        if isinstance(response, Failure):
            return api.failure(response)
        return _json({"leaving": core.name})
    if rest == [b"remove"] and method == "POST":
        name = request.query.get("node", "")
        if not name:
            raise BadRequest("remove needs ?node=NAME")
        response = await api.runtime.request(ClientRemove(name))
        if isinstance(response, Failure):
            return api.failure(response)
        return _json({"removed": name})
    return _text(404, "Not Found")
