"""With TLS configured, clients reach nodes over HTTPS only, and nodes talk to each other over mutual
TLS: a peer without the cluster certificate cannot even start the handshake."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cluster_settings import FAST

from dynastore.client import HttpClient, RingAwareClient
from dynastore.localcluster import LocalCluster, http_json
from dynastore.net.framing import NONCE_BYTES, Hello, encode_hello
from dynastore.net.tls import http_client_context


def test_a_tls_cluster_serves_https_and_its_nodes_require_the_cluster_certificate(
    tmp_path: Path, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three nodes with tls_cert_file/tls_key_file: writes and reads over HTTPS from both clients;
    plain HTTP is refused; a TLS connection to a peer port without a client certificate fails."""
    cert, key = certificate
    monkeypatch.setenv("DYNASTORE_CA", str(cert))
    overrides = (*FAST, f"tls_cert_file={cert}", f"tls_key_file={key}")
    cluster = LocalCluster(tmp_path / "c", 3, overrides=overrides)
    try:
        cluster.start()
        cluster.wait_ready(60)
        assert all(node.url.startswith("https://") for node in cluster.nodes)
        context = http_client_context(str(cert))

        async def scenario() -> None:
            async with HttpClient(cluster[0].url, ssl_context=context) as plain:
                await plain.put("secure", "k", b"over tls", content_type="text/plain")
            async with RingAwareClient(cluster[1].url, ssl_context=context) as aware:
                fetched = await aware.get("secure", "k")
                assert fetched.value.data == b"over tls"
                assert all(url.startswith("https://") for url in aware.ring_view.urls.values())  # type: ignore[union-attr]

        asyncio.run(scenario())
        with pytest.raises(OSError):
            http_json(cluster[0].url.replace("https://", "http://") + "/ping", timeout_s=3)
        # A client that trusts the CA but has no certificate of its own cannot talk to a peer port.
        peer = ssl.create_default_context(cafile=str(cert))
        peer.check_hostname = False
        # Mutual TLS: a client that trusts the CA but has no certificate of its own, sending a valid
        # handshake frame, gets the connection closed on it and never the node's own handshake back
        # (a node that did not require a certificate would answer with its handshake).
        hello = encode_hello(Hello("dynastore", "intruder", "127.0.0.1", 1, bytes(NONCE_BYTES)))
        answer = b"refused"
        with socket.create_connection(("127.0.0.1", cluster[0].peer_port), timeout=5) as raw:
            try:
                with peer.wrap_socket(raw) as tls_sock:
                    tls_sock.sendall(hello)
                    answer = tls_sock.recv(4096)
            except (ssl.SSLError, ConnectionError):
                pass
        assert answer in (b"", b"refused")
        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "dynastore",
                "cluster",
                "status",
                "--no-watch",
                "--node",
                cluster[2].url,
                "--ca",
                str(cert),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert status.returncode == 0, status.stderr
        assert "node0" in status.stdout and "DOWN" not in status.stdout
    finally:
        cluster.close()
