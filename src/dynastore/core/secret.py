"""The keys a node derives from the cluster secret: one place, so that every part of a node and every
node of a cluster derive the same ones.

Pure: settings in, bytes out. It must never log, store or send what it derives.
"""

from __future__ import annotations

from dynastore.settings import Settings


def cluster_key(settings: Settings) -> bytes:
    """The key that authenticates the inter-node handshake and the MAC of client contexts.

    Without a `cluster_secret` it is the cluster name: contexts are then protected against corruption,
    not forgery.
    """
    return (settings.cluster_secret or settings.cluster_name).encode()
