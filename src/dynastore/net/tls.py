"""TLS contexts for the HTTP API and for inter-node traffic, built from the node's settings.

TLS is on when `tls_cert_file` and `tls_key_file` are set. Between nodes it is mutual: every node
presents the cluster certificate (or one signed by the cluster CA, `tls_ca_file`) and requires the
same of its peer; peers are identified by the handshake that follows, not by host names, so host name
checks are off there. HTTP clients verify the node's certificate against the CA as usual.
"""

from __future__ import annotations

import ssl

from dynastore.settings import Settings


class TlsError(ValueError):
    """The TLS settings name files that cannot be used."""


def enabled(settings: Settings) -> bool:
    return bool(settings.tls_cert_file and settings.tls_key_file)


def _ca(settings: Settings) -> str:
    return settings.tls_ca_file or settings.tls_cert_file


def server_context(settings: Settings, *, require_client_cert: bool) -> ssl.SSLContext | None:
    if not enabled(settings):
        return None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        if require_client_cert:
            ctx.load_verify_locations(_ca(settings))
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load TLS files: {exc}") from None
    return ctx


def peer_client_context(settings: Settings) -> ssl.SSLContext | None:
    """How a node connects to its peers: present the cluster certificate, verify theirs against the CA."""
    if not enabled(settings):
        return None
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=_ca(settings))
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.check_hostname = False
        ctx.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load TLS files: {exc}") from None
    return ctx


def http_client_context(ca_file: str) -> ssl.SSLContext:
    """For clients and tools talking HTTPS to nodes whose certificates the CA in `ca_file` signed."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx
