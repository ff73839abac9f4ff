"""Private test networks: one network namespace per node, each with its own address on a bridge, and
iptables rules to cut links between them. Used by the fault tests and by `make soak`; needs root,
iproute2 and iptables (installed by scripts/install-system-deps.sh).

Layout for network `id` (0..199): a bridge `dsb<id>` in the root namespace with 10.77.<id>.1/24, and
for node i a namespace `ds<id>n<i>` whose `eth0` (a veth attached to the bridge) has 10.77.<id>.<i+2>.
The test process reaches every node through the bridge; nodes reach each other through it too, so a
cut between two nodes is a pair of DROP rules in each one's namespace. Every object created carries the
`ds<id>` prefix, so `cleanup_stale()` can remove what a killed test run left behind.

Traffic only ever goes to 10.77.<id>.0/24 addresses of these namespaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field


class NetError(Exception):
    """A namespace, link or firewall rule could not be set up."""


def _run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    if check and result.returncode != 0:
        raise NetError(f"{' '.join(cmd)}: {result.stderr.strip() or result.stdout.strip()}")
    return result


def available() -> str | None:
    """None when private networks can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "needs root"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"needs {tool} (run scripts/install-system-deps.sh)"
    probe = f"dsprobe{os.getpid() % 10000}"
    result = _run("ip", "netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"cannot create network namespaces: {result.stderr.strip()}"
    _run("ip", "netns", "del", probe, check=False)
    return None


def cleanup_stale(net_id: int | None = None) -> None:
    """Delete namespaces and bridges left by earlier runs (all of them, or one network's)."""
    prefix = "ds" if net_id is None else f"ds{net_id}n"
    for line in _run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if name.startswith(prefix) and name[2:3].isdigit():
            _run("ip", "netns", "del", name, check=False)
    bridge_prefix = "dsb" if net_id is None else f"dsb{net_id}"
    for line in _run("ip", "-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            name = parts[1].strip().split("@")[0]
            if name.startswith(bridge_prefix) and (net_id is not None or name[3:].isdigit()):
                _run("ip", "link", "del", name, check=False)


@dataclass
class PrivateNet:
    """A bridge and `count` namespaces; `close()` removes everything, whatever state it is in."""

    net_id: int
    count: int
    namespaces: list[str] = field(default_factory=list)
    addresses: list[str] = field(default_factory=list)
    cuts: set[tuple[int, int]] = field(default_factory=set)

    @property
    def bridge(self) -> str:
        return f"dsb{self.net_id}"

    @property
    def gateway(self) -> str:
        return f"10.77.{self.net_id}.1"

    def __enter__(self) -> PrivateNet:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def up(self) -> None:
        assert 0 <= self.net_id < 200 and 0 < self.count < 250
        cleanup_stale(self.net_id)
        try:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            for i in range(self.count):
                self._add_node(i)
        except Exception:
            self.close()
            raise

    def _add_node(self, i: int) -> None:
        ns = f"ds{self.net_id}n{i}"
        host_end = f"dsv{self.net_id}x{i}"
        address = f"10.77.{self.net_id}.{i + 2}"
        _run("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run("ip", "link", "set", host_end, "master", self.bridge)
        _run("ip", "link", "set", host_end, "up")
        _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
        _run("ip", "netns", "exec", ns, "ip", "link", "set", "eth0", "up")
        self.addresses.append(address)

    def cut(self, a: int, b: int) -> None:
        """Drop all traffic between nodes a and b, both directions (the test process still reaches both)."""
        for x, y in ((a, b), (b, a)):
            if (x, y) in self.cuts:
                continue
            ns = self.namespaces[x]
            peer = self.addresses[y]
            _run("ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-s", peer, "-j", "DROP")
            _run("ip", "netns", "exec", ns, "iptables", "-A", "OUTPUT", "-d", peer, "-j", "DROP")
            self.cuts.add((x, y))

    def isolate(self, a: int) -> None:
        """Cut node a from every other node."""
        for b in range(self.count):
            if b != a:
                self.cut(a, b)

    def partition(self, *groups: list[int]) -> None:
        """Cut every link between different groups."""
        for i, left in enumerate(groups):
            for right in groups[i + 1 :]:
                for a in left:
                    for b in right:
                        self.cut(a, b)

    def heal(self) -> None:
        for ns in self.namespaces:
            _run("ip", "netns", "exec", ns, "iptables", "-F", "INPUT", check=False)
            _run("ip", "netns", "exec", ns, "iptables", "-F", "OUTPUT", check=False)
        self.cuts.clear()

    def close(self) -> None:
        for ns in self.namespaces:
            _run("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()
        _run("ip", "link", "del", self.bridge, check=False)
