"""The `GET /ring` document: what a node serves of its ring (`document`) and what a partition-aware
client reads back (`RingView.from_json`), in one place so that the two always agree.

Pure: cluster state in, JSON-ready dictionaries out, and back; never any I/O. A document from the
network is validated field by field: a malformed one raises RingViewError.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard
from urllib.parse import urlsplit

from dynastore.core.membership import ClusterState, RingState
from dynastore.core.ring import Ring


def epoch(state: ClusterState) -> str:
    """Changes whenever routing by the ring changes: a new ring, or a partition switching owners."""
    return f"{state.ring.version}.{len(state.ring.done)}"


def document(state: ClusterState, n_val: int) -> dict[str, Any]:
    """The ring as `GET /ring` serves it; `n_val` is the cluster's default. Each member is reached by
    its own scheme (https when it serves TLS)."""
    ring = state.ring
    buckets = {}
    for name, record in state.buckets:
        bucket_n_val = record.as_dict().get("n_val")
        if isinstance(bucket_n_val, int) and not isinstance(bucket_n_val, bool):
            buckets[base64.b64encode(name).decode()] = bucket_n_val
    return {
        "cluster": state.cluster,
        "version": ring.version,
        "epoch": epoch(state),
        "ring_size": ring.ring.size,
        "owners": list(ring.owners),
        # During a transition: the ring being moved to, and the (partition, node) transfers done;
        # a partition whose receivers are all done is served by the next ring.
        "next_owners": None if ring.next_owners is None else list(ring.next_owners),
        "done": sorted([p, n] for p, n in ring.done),
        "members": {
            m.name: {
                "host": m.host,
                "http_port": m.http_port,
                "peer_port": m.peer_port,
                "status": m.status,
                "scheme": "https" if m.tls else "http",
            }
            for m in state.members
        },
        "n_val": n_val,
        # n_val of every bucket that sets one, keyed by the bucket's name in base64.
        "bucket_n_vals": buckets,
    }


# Addresses a node may bind that mean "every interface" and so cannot be dialled as given.
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


class RingViewError(ValueError):
    """A `GET /ring` answer that does not describe a ring (the node is not a dynastore node, or broken)."""


@dataclass(frozen=True, slots=True)
class RingView:
    """A ring as one node served it: the ring state (with any transition in progress), the HTTP address
    of each member, the cluster's default n_val and the n_val of every bucket that sets one."""

    cluster: str
    version: int
    state: RingState
    urls: Mapping[str, str]
    n_val: int
    epoch: str = ""
    bucket_n_vals: Mapping[bytes, int] = field(default_factory=dict)

    @property
    def ring(self) -> Ring:
        return self.state.ring

    @classmethod
    def from_json(cls, data: Any, served_by: str) -> RingView:
        """Parse a `GET /ring` body. `served_by` (the URL that answered) stands in for a wildcard host."""
        if not isinstance(data, dict):
            raise RingViewError("the ring is not a JSON object")
        cluster, version, owners, members, n_val = (
            data.get("cluster"),
            data.get("version"),
            data.get("owners"),
            data.get("members"),
            data.get("n_val"),
        )
        if not isinstance(cluster, str) or not _is_int(version) or not _is_int(n_val) or n_val < 1:
            raise RingViewError("the ring lacks a cluster name, a version or an n_val")
        if not isinstance(owners, list) or not owners or not all(isinstance(o, str) and o for o in owners):
            raise RingViewError("the ring's owners are not a list of node names")
        size = len(owners)
        if size & (size - 1):
            raise RingViewError(f"the ring's size {size} is not a power of two")
        if not isinstance(members, dict):
            raise RingViewError("the ring's members are not an object")
        fallback_host = urlsplit(served_by).hostname or ""
        urls: dict[str, str] = {}
        for name, member in members.items():
            if not isinstance(member, dict):
                raise RingViewError(f"member {name} is not an object")
            host, port = member.get("host"), member.get("http_port")
            if not isinstance(host, str) or not _is_int(port) or not 0 < port < 65536:
                raise RingViewError(f"member {name} has no usable HTTP address")
            if host in _WILDCARD_HOSTS:
                host = fallback_host
            if ":" in host and not host.startswith("["):
                host = f"[{host}]"
            scheme = member.get("scheme", "http")
            if scheme not in ("http", "https"):
                raise RingViewError(f"member {name} has an unknown scheme {scheme!r}")
            urls[name] = f"{scheme}://{host}:{port}"
        next_owners = data.get("next_owners")
        if next_owners is not None and (
            not isinstance(next_owners, list)
            or len(next_owners) != size
            or not all(isinstance(o, str) and o for o in next_owners)
        ):
            raise RingViewError("the ring's next owners are not a list of node names of the ring's size")
        done: set[tuple[int, str]] = set()
        for entry in data.get("done") or []:
            if not (isinstance(entry, list) and len(entry) == 2 and _is_int(entry[0]) and isinstance(entry[1], str)):
                raise RingViewError("the ring's finished transfers are not [partition, node] pairs")
            done.add((entry[0], entry[1]))
        bucket_n_vals: dict[bytes, int] = {}
        raw_buckets = data.get("bucket_n_vals") or {}
        if not isinstance(raw_buckets, dict):
            raise RingViewError("the ring's bucket n_vals are not an object")
        for encoded, bucket_n_val in raw_buckets.items():
            try:
                name = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise RingViewError("a bucket name in the ring is not base64") from None
            if _is_int(bucket_n_val) and bucket_n_val >= 1:
                bucket_n_vals[name] = bucket_n_val
        epoch = data.get("epoch")
        state = RingState(
            version, "", tuple(owners), None if next_owners is None else tuple(next_owners), frozenset(done)
        )
        return cls(cluster, version, state, urls, n_val, epoch if isinstance(epoch, str) else "", bucket_n_vals)

    def same_placement(self, other: RingView) -> bool:
        """Whether routing by `other` would send every request where routing by this view does."""
        mine, theirs = self.state, other.state
        return (mine.owners, mine.next_owners, mine.done) == (theirs.owners, theirs.next_owners, theirs.done) and dict(
            self.urls
        ) == dict(other.urls)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
