"""The keys a node derives from the cluster secret: one place, so that every part of a node and every
node of a cluster derive the same ones.

A cluster's key material is its `cluster_secret` (required on any node whose address is not a
loopback one), or, on a loopback-only cluster started without one, a random key created with the
cluster, persisted by every member and handed to nodes that join. From the material come one key per
purpose (the peer handshake, the MAC of client contexts, the proof an operator gives with the secret),
so that no key serves two purposes. While a secret is being rotated (`cluster_secret_accepted` set),
the previous material is accepted too; only the current one is ever used to sign.

Pure: settings and bytes in, bytes out. It must never log, store or send what it derives.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

from dynastore.settings import Settings

SECRET_CHARS_MIN = 16
# The random key of a cluster without a configured secret.
CLUSTER_KEY_BYTES = 32

PEER = "dynastore peer handshake"
CONTEXT = "dynastore client context"
ADMIN = "dynastore operator proof"


@functools.lru_cache(maxsize=64)
def derive(material: bytes, purpose: str) -> bytes:
    """The key for one purpose, from the cluster's key material (kept: every request needs one)."""
    return hmac.new(material, purpose.encode(), hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class ClusterKeys:
    """A cluster's key material: the current one first, then any still accepted during a rotation.

    `configured`: the material is the operator's `cluster_secret` (not a key stored with the cluster).
    """

    materials: tuple[bytes, ...]
    configured: bool

    def __post_init__(self) -> None:
        assert self.materials and all(self.materials), "a cluster always has key material"

    def keys(self, purpose: str) -> tuple[bytes, ...]:
        """The keys accepted for `purpose`; the first signs."""
        return tuple(derive(material, purpose) for material in self.materials)

    def signing(self, purpose: str) -> bytes:
        return derive(self.materials[0], purpose)


def configured(settings: Settings) -> ClusterKeys | None:
    """The keys from the operator's secret (and the previous one during a rotation), if one is set."""
    if not settings.cluster_secret:
        return None
    materials = [settings.cluster_secret.encode()]
    if settings.cluster_secret_accepted:
        materials.append(settings.cluster_secret_accepted.encode())
    return ClusterKeys(tuple(materials), configured=True)


def cluster_keys(settings: Settings, stored: bytes | None) -> ClusterKeys:
    """The keys a node uses: its configured secret's, else the key stored with its cluster."""
    keys = configured(settings)
    if keys is not None:
        return keys
    assert stored, "a cluster without a configured secret has a stored key"
    return ClusterKeys((stored,), configured=False)


# Asked of every HTTP request's Host and client address, which are few: parsed once each.
@functools.lru_cache(maxsize=256)
def is_loopback(host: str) -> bool:
    """Whether `host` names only this machine (a loopback address, or `localhost`)."""
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def startup_problem(settings: Settings, host: str, advertise_host: str = "") -> str | None:
    """Why a node may not start bound to `host` and advertising `advertise_host` (default: `host`) with
    these settings (one line naming the setting), or None.

    A node is open to this machine only when both addresses are loopback ones: a wildcard bind
    (0.0.0.0) listens on every interface whatever it advertises, and an advertised network address is
    one that other machines are meant to reach (through a proxy or NAT), so either needs the secret.
    """
    for name in ("cluster_secret", "cluster_secret_accepted"):
        value = getattr(settings, name)
        if value and len(value) < SECRET_CHARS_MIN:
            return f"{name} must be at least {SECRET_CHARS_MIN} characters"
    if settings.cluster_secret:
        return None
    for flag, address in (("--host", host), ("--advertise-host", advertise_host or host)):
        if not is_loopback(address):
            return (
                f"cluster_secret must be set (at least {SECRET_CHARS_MIN} characters, the same on every node) "
                f"on a node whose {flag} {address} is not a loopback address"
            )
    return None
