"""Start, signal and stop local node processes: used by `dynastore up`, the tests and the benchmarks.

Each node is its own OS process (`python -m dynastore node ...`) in its own process group, with its
log in the cluster's directory, so a test can SIGKILL or SIGSTOP one node and start it again with
exactly the same command line. A node may run inside a network namespace (`netns`), which gives it
its own address. Every wait here is bounded, and `close()` kills whatever is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ClusterError(Exception):
    """A local cluster did not reach the state asked for in time; the message includes log tails."""


# Ports for local nodes come from below the kernel's ephemeral range (32768-60999 by default), so an
# outgoing connection of any process can never take a node's port between its choice and its bind,
# and a port once handed out is never handed out again by this process (the kernel may reuse a closed
# ephemeral port at once, which gave two nodes of one cluster the same port on a busy machine).
_PORT_RANGE = (20_000, 32_000)
_PORTS_TRIES_MAX = 200
_handed_out: set[int] = set()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now, never handed out before by this process."""
    rng = random.Random()
    for _ in range(_PORTS_TRIES_MAX):
        port = rng.randrange(*_PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise ClusterError(f"no free port in {_PORT_RANGE[0]}-{_PORT_RANGE[1]} after {_PORTS_TRIES_MAX} tries")


def http_json(
    url: str,
    timeout_s: float = 2.0,
    method: str = "GET",
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    """GET (or another method) a JSON document; HTTPS is verified against $DYNASTORE_CA when set."""
    request = urllib.request.Request(url, method=method, data=data, headers=headers or {})
    context = None
    if url.startswith("https:") and os.environ.get("DYNASTORE_CA"):
        from dynastore.net.tls import http_client_context

        context = http_client_context(os.environ["DYNASTORE_CA"])
    with urllib.request.urlopen(request, timeout=timeout_s, context=context) as resp:
        return json.loads(resp.read())


SECRET_FILE = "cluster.secret"


def local_secret(root: Path) -> Path:
    """The secret file of a local cluster in `root`, created (readable by its owner only) if missing."""
    import secrets

    root.mkdir(parents=True, exist_ok=True)
    path = (root / SECRET_FILE).resolve()
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
    return path


def secret_proof(url: str, method: str, target: str, body: bytes, secret: str) -> dict[str, str]:
    """The header proving to the node at `url` that a request comes from a holder of the cluster secret
    (the node's nonce, MAC'd with the operator key: the secret itself is never sent)."""
    from dynastore.api.auth import PROOF_HEADER, proof
    from dynastore.core.secret import ADMIN, derive

    nonce = bytes.fromhex(http_json(url.rstrip("/") + "/admin/challenge", timeout_s=10.0)["nonce"])
    mac = proof(derive(secret.encode(), ADMIN), nonce, method, target, body)
    return {PROOF_HEADER: f"{nonce.hex()}:{mac.hex()}"}


@dataclass
class NodeProc:
    index: int
    name: str
    host: str
    http_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    seeds: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    netns: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    # A command the node runs under, e.g. ("faketime", "+60s") to skew its clock.
    wrapper: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    # With security on, probes prove they hold this cluster secret (they are the cluster's operator).
    secret: str | None = None
    # The address the node tells peers and clients (--advertise-host), when not its --host.
    advertise_host: str = ""
    # More arguments for `dynastore node` (--config, --log-level, ...).
    args: tuple[str, ...] = ()
    # Riak's Protocol Buffers API; 0: none.
    pb_port: int = 0

    @property
    def address(self) -> str:
        return self.advertise_host or self.host

    @property
    def url(self) -> str:
        scheme = "https" if any(o.startswith("tls_cert_file=") for o in self.overrides) else "http"
        return f"{scheme}://{self.address}:{self.http_port}"

    @property
    def peer_address(self) -> str:
        return f"{self.address}:{self.peer_port}"

    @property
    def pb_address(self) -> str:
        return f"{self.address}:{self.pb_port}"

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "dynastore",
            "node",
            "--name",
            self.name,
            "--host",
            self.host,
            "--http-port",
            str(self.http_port),
            "--peer-port",
            str(self.peer_port),
            "--data-dir",
            str(self.data_dir),
            "--pb-port",
            str(self.pb_port),
        ]
        if self.advertise_host:
            cmd += ["--advertise-host", self.advertise_host]
        for seed in self.seeds:
            cmd += ["--seed", seed]
        for pair in self.overrides:
            cmd += ["--set", pair]
        cmd += self.args
        cmd = [*self.wrapper, *cmd]
        if self.netns is not None:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        return cmd

    def start(self) -> None:
        assert not self.alive, f"{self.name} is already running"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **self.env},
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the node and wait for it to be gone."""
        self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 15.0) -> int | None:
        """SIGTERM, wait (bounded), SIGKILL if needed. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.signal(signal.SIGCONT)
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"  {self.name}| {line}" for line in text[-lines:])

    def status(self, timeout_s: float = 1.0) -> Any:
        return self.get_json("/admin/status", timeout_s)

    def get_json(self, target: str, timeout_s: float = 5.0) -> Any:
        """GET a JSON document of this node as its operator (with a proof of the secret when secure)."""
        headers = secret_proof(self.url, "GET", target, b"", self.secret) if self.secret else None
        return http_json(self.url + target, timeout_s=timeout_s, headers=headers)


class LocalCluster:
    """N nodes named node0..node{N-1}; node i>0 is seeded with node0 so fresh nodes join it."""

    def __init__(
        self,
        root: Path,
        count: int,
        *,
        host: str = "127.0.0.1",
        http_port: int | None = None,
        peer_port: int | None = None,
        pb_port: int | None = None,
        overrides: tuple[str, ...] = (),
        hosts: list[str] | None = None,
        netns: list[str] | None = None,
        make_secret: bool = True,
        advertise_host: str = "",
        node_args: tuple[str, ...] = (),
    ) -> None:
        """Nodes share a secret kept in ROOT/cluster.secret (created if missing) unless `overrides` give
        one, or `make_secret` is false: the secret comes from the environment, or (loopback only) the
        cluster makes its own key."""
        self.root = root
        self.secret: str | None = None
        if make_secret and not any(o.startswith(("cluster_secret=", "cluster_secret_file=")) for o in overrides):
            path = local_secret(root)
            self.secret = path.read_text().strip()
            overrides = (*overrides, f"cluster_secret_file={path}")
        self.overrides = overrides
        # Set by a test that turns security on: probes then prove the secret.
        self.secure = False
        self.nodes: list[NodeProc] = []
        self._host = host
        self._advertise_host = advertise_host
        self._node_args = node_args
        self._hosts = hosts
        self._netns = netns
        self._http_base = http_port
        self._peer_base = peer_port
        self._pb_base = pb_port
        for _ in range(count):
            self._define_node()

    def _define_node(self, seeds: tuple[str, ...] | None = None) -> NodeProc:
        i = len(self.nodes)
        host = self._hosts[i] if self._hosts else self._host
        http_port = (
            self._http_base + i if self._http_base is not None else free_port(host if not self._netns else "127.0.0.1")
        )
        peer_port = (
            self._peer_base + i if self._peer_base is not None else free_port(host if not self._netns else "127.0.0.1")
        )
        # Every node serves PB, as `up` starts them: on a free port unless a base is given (0: none).
        if self._pb_base is None:
            pb_port = free_port(host if not self._netns else "127.0.0.1")
        else:
            pb_port = self._pb_base + i if self._pb_base else 0
        if seeds is None:
            seeds = (self.nodes[0].peer_address,) if self.nodes else ()
        node = NodeProc(
            i,
            f"node{i}",
            host,
            http_port,
            peer_port,
            self.root / f"node-{i}",
            self.root / f"node-{i}.log",
            seeds,
            self.overrides,
            self._netns[i] if self._netns else None,
            advertise_host=self._advertise_host,
            args=self._node_args,
            pb_port=pb_port,
        )
        self.nodes.append(node)
        return node

    def add_node(self, *, seeds: tuple[str, ...] = ()) -> NodeProc:
        """Define one more node (not started); with no seeds it starts as a one-node cluster."""
        return self._define_node(seeds)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getitem__(self, index: int) -> NodeProc:
        return self.nodes[index]

    def start(self) -> None:
        for node in self.nodes:
            if not node.alive:
                node.start()

    def close(self) -> None:
        for node in self.nodes:
            node.signal(signal.SIGCONT)
            node.signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for node in self.nodes:
            if node.proc is None:
                continue
            try:
                node.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.kill()

    def logs(self, lines: int = 30) -> str:
        return "\n".join(node.log_tail(lines) for node in self.nodes)

    def wait(
        self,
        condition: Callable[[], bool],
        timeout_s: float,
        what: str,
        *,
        poll_s: float = 0.1,
        detail: Callable[[], str] | None = None,
    ) -> None:
        """Poll `condition` every `poll_s` until true; on timeout raise ClusterError with what was
        awaited, `detail()` (what the caller wants to see about the state then) and the logs."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if condition():
                    return
            except (OSError, urllib.error.URLError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                extra = ""
                if detail is not None:
                    try:
                        extra = detail() + "\n"
                    except (OSError, urllib.error.URLError, ValueError, KeyError) as exc:
                        extra = f"(no detail: {exc})\n"
                raise ClusterError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{extra}{self.logs()}")
            time.sleep(poll_s)

    def ready(self, nodes: list[NodeProc] | None = None) -> bool:
        """Every given node is up, sees every given node as a valid, reachable owner of partitions."""
        nodes = [n for n in (nodes or self.nodes) if n.alive]
        names = {n.name for n in nodes}
        for node in nodes:
            status = node.status()
            good = {
                m["name"]
                for m in status["members"]
                if m["status"] == "valid" and m["reachable"] and m["partitions"] > 0
            }
            if not names <= good:
                return False
        return True

    def wait_ready(self, timeout_s: float = 60.0, nodes: list[NodeProc] | None = None) -> None:
        self.wait(lambda: self.ready(nodes), timeout_s, "the cluster to be ready")

    def wait_serving(self, node: NodeProc, timeout_s: float = 30.0) -> None:
        self.wait(lambda: node.get_json("/stats", 1.0) is not None, timeout_s, f"{node.name} to serve")

    def stats(self, node: NodeProc) -> Any:
        return node.get_json("/stats")

    def set_secure(self, secure: bool) -> None:
        """Say whether security is on, so that probes authenticate (with the cluster secret)."""
        self.secure = secure
        for node in self.nodes:
            node.secret = self.secret if secure else None
