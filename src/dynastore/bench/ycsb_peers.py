"""Start, wait for and stop the stores the YCSB driver compares: dynastore, etcd, redis, pysyncobj.

Every store is started by the benchmark on free loopback ports in a temporary directory, each server
in its own process group with its log in that directory. `running(...)` is a context manager: what
it started is stopped when the block ends, however it ends (SIGTERM to each process group, a bounded
wait, then SIGKILL). Every wait for a store to come up is bounded too, and gives up at once when a
server process has exited; the error then carries the tail of its log.

A store that is not installed raises `PeerUnavailable` with what to install, so the caller can skip
it with a clear message; one that is installed but fails to come up raises `PeerError`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from dynastore.bench.ycsb_targets import (
    DYNASTORE_HTTP_BUFFERED,
    DYNASTORE_PB,
    DYNASTORE_TARGETS,
    ETCD,
    NOOP,
    PYSYNCOBJ,
    REDIS,
    Endpoint,
)
from dynastore.localcluster import ClusterError, LocalCluster, free_port, http_json

HOST = "127.0.0.1"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.1
INSTALL_HINT = "scripts/install-bench-deps.sh, or `make bench`, installs it"


class PeerUnavailable(Exception):
    """The store is not installed on this machine; the message says what is missing."""


class PeerError(Exception):
    """The store is installed but did not come up; the message includes the tails of its logs."""


@dataclass
class ServerProcess:
    """One server process in its own process group, logging to a file."""

    name: str
    command: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None, f"{self.name} was already started"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal_group(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        """SIGTERM the process group, wait (bounded), then SIGKILL whatever is left of it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
        # Also when the leader exited by itself: a child it left behind would still hold a port.
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=STOP_TIMEOUT_S)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"  {self.name}| {line}" for line in text[-lines:])


@dataclass
class RunningPeer:
    """A store that is up: where to reach it, which processes serve it (for CPU accounting), its version."""

    target: str
    endpoint: Endpoint
    server_pids: list[int] = field(default_factory=list)
    version: str = ""

    @property
    def nodes(self) -> int:
        """How many servers answer requests (noop has none)."""
        return len(self.endpoint.addresses)


def _wait_until(condition: Callable[[], bool], what: str, servers: list[ServerProcess], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        for server in servers:
            if not server.alive:
                code = server.proc.returncode if server.proc is not None else None
                tail = server.log_tail()
                raise PeerError(f"{server.name} exited with status {code} while waiting for {what}\n{tail}")
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError, KeyError):
            if condition():
                return
        if time.monotonic() > deadline:
            tails = "\n".join(server.log_tail() for server in servers)
            raise PeerError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{tails}")
        time.sleep(POLL_S)


@contextlib.contextmanager
def _servers(servers: list[ServerProcess]) -> Iterator[list[ServerProcess]]:
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def _version(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else ""


def check_available(target: str, *, python_client: bool = True) -> None:
    """Raise PeerUnavailable when what `target` needs is not installed (with `python_client`, also the
    Python client the YCSB driver talks to it with; the C load generators need none)."""
    if target == ETCD and shutil.which("etcd") is None:
        raise PeerUnavailable(f"etcd is not installed (Debian package etcd-server; {INSTALL_HINT})")
    if target == REDIS:
        if shutil.which("redis-server") is None:
            raise PeerUnavailable(f"redis-server is not installed (Debian package redis-server; {INSTALL_HINT})")
        if python_client and importlib.util.find_spec("redis") is None:
            raise PeerUnavailable("the redis Python package is not installed (pip install -e '.[bench]')")
    if target == PYSYNCOBJ and importlib.util.find_spec("pysyncobj") is None:
        raise PeerUnavailable("the pysyncobj Python package is not installed (pip install -e '.[bench]')")


@contextlib.contextmanager
def running(
    target: str,
    root: Path,
    *,
    nodes: int = 3,
    overrides: tuple[str, ...] = (),
    urls: tuple[str, ...] = (),
    python_client: bool = True,
) -> Iterator[RunningPeer]:
    """Start the store `target` needs under `root`, yield it once it serves, stop it afterwards.

    For dynastore targets, `nodes` is the size of the cluster started, `overrides` its settings (the
    buffered target adds durable=false), and `urls` names a running cluster to use instead.
    """
    check_available(target, python_client=python_client)
    if target == NOOP:
        yield RunningPeer(target, Endpoint(NOOP, ()))
    elif target in DYNASTORE_TARGETS:
        if target == DYNASTORE_HTTP_BUFFERED:
            overrides = (*overrides, "durable=false")
        with _dynastore(target, root, nodes, overrides, urls) as peer:
            yield peer
    elif target == ETCD:
        with _etcd(root) as peer:
            yield peer
    elif target == REDIS:
        with _redis(root) as peer:
            yield peer
    elif target == PYSYNCOBJ:
        with _pysyncobj(root) as peer:
            yield peer
    else:
        raise ValueError(f"unknown target {target!r}")


# --- dynastore ---------------------------------------------------------------------------------------------


def member_urls(url: str) -> tuple[str, ...]:
    """The HTTP address of every member of the running cluster that `url` belongs to."""
    from dynastore.client.routing import RingView

    view = RingView.from_json(http_json(url.rstrip("/") + "/ring", timeout_s=5.0), url)
    return tuple(sorted(view.urls.values()))


@contextlib.contextmanager
def _dynastore(
    target: str, root: Path, nodes: int, overrides: tuple[str, ...], urls: tuple[str, ...]
) -> Iterator[RunningPeer]:
    version = _dynastore_version()
    if urls:
        try:
            members = member_urls(urls[0])
        except (OSError, urllib.error.URLError, ValueError) as exc:
            raise PeerError(f"cannot read the ring of {urls[0]}: {exc}") from exc
        if target == DYNASTORE_PB:
            raise PeerError("dynastore-pb drives a cluster the bench starts (the ring does not list PB ports)")
        yield RunningPeer(target, Endpoint(target, members or urls), version=version)
        return
    cluster = LocalCluster(root / "dynastore", nodes, overrides=overrides)
    try:
        cluster.start()
        try:
            cluster.wait_ready(READY_TIMEOUT_S)
        except ClusterError as exc:
            raise PeerError(str(exc)) from exc
        pids = [node.proc.pid for node in cluster.nodes if node.proc is not None]
        addresses = tuple(node.pb_address if target == DYNASTORE_PB else node.url for node in cluster.nodes)
        yield RunningPeer(target, Endpoint(target, addresses), pids, version)
    finally:
        cluster.close()


def _dynastore_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"dynastore {version('dynastore')}"
    except PackageNotFoundError:
        return "dynastore"


# --- etcd --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _etcd(root: Path) -> Iterator[RunningPeer]:
    with etcd_cluster(root) as (peer, _servers_started):
        yield peer


@contextlib.contextmanager
def etcd_cluster(
    root: Path, *, hosts: list[str] | None = None, netns: list[str] | None = None
) -> Iterator[tuple[RunningPeer, list[ServerProcess]]]:
    """A 3-node etcd under `root`, and its server processes (to signal one). On loopback, or member i
    on `hosts[i]` inside network namespace `netns[i]` (localnet.PrivateNet's), so a link can be cut."""
    names = [f"etcd{i}" for i in range(3)]
    hosts = hosts or [HOST] * len(names)
    assert len(hosts) == len(names) and (netns is None or len(netns) == len(names))
    # In a namespace of its own a member has the whole port space; a free loopback port is as good as any.
    client_ports = [free_port(HOST) for _ in names]
    peer_ports = [free_port(HOST) for _ in names]
    initial = ",".join(
        f"{name}=http://{host}:{port}" for name, host, port in zip(names, hosts, peer_ports, strict=True)
    )
    servers = []
    for i, (name, host, client, peer) in enumerate(zip(names, hosts, client_ports, peer_ports, strict=True)):
        command = [
            "etcd",
            "--name",
            name,
            "--data-dir",
            str(root / name),
            "--listen-client-urls",
            f"http://{host}:{client}",
            "--advertise-client-urls",
            f"http://{host}:{client}",
            "--listen-peer-urls",
            f"http://{host}:{peer}",
            "--initial-advertise-peer-urls",
            f"http://{host}:{peer}",
            "--initial-cluster",
            initial,
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            "ycsb",
        ]
        if netns is not None:
            command = ["ip", "netns", "exec", netns[i], *command]
        servers.append(ServerProcess(name, command, root / f"{name}.log"))
    urls = tuple(f"http://{host}:{port}" for host, port in zip(hosts, client_ports, strict=True))

    def healthy() -> bool:
        return all(http_json(url + "/health", timeout_s=1.0).get("health") == "true" for url in urls)

    with _servers(servers):
        _wait_until(healthy, "every etcd member to be healthy", servers, READY_TIMEOUT_S)
        pids = [s.proc.pid for s in servers if s.proc is not None]
        yield RunningPeer(ETCD, Endpoint(ETCD, urls), pids, _version(["etcd", "--version"])), servers


# --- redis -------------------------------------------------------------------------------------------------


def _redis_pings(port: int) -> bool:
    with socket.create_connection((HOST, port), timeout=1.0) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")


@contextlib.contextmanager
def _redis(root: Path) -> Iterator[RunningPeer]:
    port = free_port(HOST)
    # No snapshots, no append-only file: one node in memory, the ceiling the others are measured against.
    command = ["redis-server", "--bind", HOST, "--port", str(port), "--save", "", "--appendonly", "no"]
    command += ["--dir", str(root)]
    servers = [ServerProcess("redis", command, root / "redis.log")]
    with _servers(servers):
        _wait_until(lambda: _redis_pings(port), "redis to answer PING", servers, READY_TIMEOUT_S)
        pids = [s.proc.pid for s in servers if s.proc is not None]
        yield RunningPeer(REDIS, Endpoint(REDIS, (f"{HOST}:{port}",)), pids, _version(["redis-server", "--version"]))


# --- pysyncobj ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _pysyncobj(root: Path) -> Iterator[RunningPeer]:
    raft = [f"{HOST}:{free_port(HOST)}" for _ in range(3)]
    http_ports = [free_port(HOST) for _ in raft]
    servers = []
    for i, (address, http_port) in enumerate(zip(raft, http_ports, strict=True)):
        command = [sys.executable, "-m", "dynastore.bench.ycsb_pysyncobj_server", "--raft", address]
        for partner in raft:
            if partner != address:
                command += ["--partner", partner]
        command += ["--http-port", str(http_port)]
        servers.append(ServerProcess(f"pysyncobj{i}", command, root / f"pysyncobj{i}.log"))
    urls = tuple(f"http://{HOST}:{port}" for port in http_ports)

    def ready() -> bool:
        for url in urls:
            with urllib.request.urlopen(url + "/ready", timeout=1.0) as resp:
                if resp.status != 200:
                    return False
        return True

    with _servers(servers):
        _wait_until(ready, "every pysyncobj node to know a leader", servers, READY_TIMEOUT_S)
        pids = [s.proc.pid for s in servers if s.proc is not None]
        from importlib.metadata import version

        yield RunningPeer(PYSYNCOBJ, Endpoint(PYSYNCOBJ, urls), pids, f"pysyncobj {version('pysyncobj')}")
