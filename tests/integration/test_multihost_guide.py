# ruff: noqa: E501 (GUIDE holds the README's lines as they are)
"""The README's multi-host guide ("Running nodes on real hosts"), run command by command on three
network-namespace hosts and a client namespace: each its own address, nodes bound to 0.0.0.0 and
advertising their host's address, the secret from a file, the config file checked, the guide's
`cluster status`, `/ready`, and a put and a get from the client host.

GUIDE is the guide's block as the README shows it; the test only maps the README's addresses
(10.0.0.1..3) to the namespaces' and each host's /etc/dynastore and /var/lib/dynastore to a directory
of its own (the namespaces share one filesystem). The one step the guide gives in prose, copying the
secret file to every host, the test does itself. Namespaces and processes are removed even on failure.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from proc_util import stop_process_groups

from dynastore import localnet

GUIDE = """\
all$    mkdir -p -m 700 /etc/dynastore /var/lib/dynastore
all$    printf 'cluster_secret_file = "/etc/dynastore/secret"\\n[node]\\nhost = "0.0.0.0"\\ndata_dir = "/var/lib/dynastore"\\n' > /etc/dynastore/dynastore.toml
host-a$ head -c 32 /dev/urandom | base64 > /etc/dynastore/secret && chmod 600 /etc/dynastore/secret
all$    dynastore config check /etc/dynastore/dynastore.toml
host-a$ dynastore node --config /etc/dynastore/dynastore.toml --name a --advertise-host 10.0.0.1
host-b$ dynastore node --config /etc/dynastore/dynastore.toml --name b --advertise-host 10.0.0.2 --seed 10.0.0.1:9000
host-c$ dynastore node --config /etc/dynastore/dynastore.toml --name c --advertise-host 10.0.0.3
any$    dynastore cluster join 10.0.0.1:9000 --node http://10.0.0.3:8098 --secret-file /etc/dynastore/secret
any$    dynastore cluster status --node http://10.0.0.1:8098
any$    curl -s http://10.0.0.2:8098/ready
any$    dynastore put orders 42 '{"total": 9.5}' --node http://10.0.0.2:8098
any$    dynastore get orders 42 --node http://10.0.0.3:8098
"""

HOSTS = ("host-a", "host-b", "host-c", "any")
README = Path(__file__).resolve().parents[2] / "README.md"


def guide_steps(text: str) -> list[tuple[str, str]]:
    steps = []
    for line in text.splitlines():
        prompt, _, command = line.partition("$ ")
        assert prompt in (*HOSTS, "all"), f"a guide line must start with a host's prompt: {line!r}"
        steps.append((prompt, command.strip()))
    return steps


def test_the_readme_shows_the_guide_this_test_runs() -> None:
    """Once the README carries the guide with --advertise-host, its block is exactly GUIDE."""
    text = README.read_text()
    section = text.split("## Running nodes on real hosts", 1)
    assert len(section) == 2, "the README has a section 'Running nodes on real hosts'"
    block = re.search(r"```sh\n(.*?)```", section[1], re.S)
    assert block is not None
    if "--advertise-host" not in block.group(1):
        pytest.skip("README.md still shows the guide from before --advertise-host (README-PART to be merged)")
    assert block.group(1) == GUIDE


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[localnet.PrivateNet, list[subprocess.Popen[bytes]]]]:
    reason = localnet.available()
    if reason is not None:
        if os.geteuid() == 0:
            pytest.fail(f"network namespaces are required for the multi-host guide: {reason}")
        pytest.skip(f"the multi-host guide needs network namespaces: {reason}")
    # Its own range of network ids (the fault suite uses 100-199), distinct per test process.
    net = localnet.PrivateNet(60 + os.getpid() % 40, len(HOSTS))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        net.up()
        yield net, procs
    finally:
        stop_process_groups(procs)
        net.close()


def http_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return json.loads(resp.read())


def wait_for(
    condition: object, timeout_s: float, what: str, logs: list[Path], procs: list[subprocess.Popen[bytes]]
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and all(proc.poll() is None for proc in procs):
        try:
            if condition():  # type: ignore[operator]
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    tails = "\n".join(f"{log.name}:\n{log.read_text(errors='replace')[-3000:]}" for log in logs if log.exists())
    raise AssertionError(f"gave up after {timeout_s:.0f} s (or a node exited) waiting for {what}\n{tails}")


def test_the_multi_host_guide_works_command_by_command(
    tmp_path: Path, hosts: tuple[localnet.PrivateNet, list[subprocess.Popen[bytes]]]
) -> None:
    net, procs = hosts
    address = {f"10.0.0.{i + 1}": net.addresses[i] for i in range(3)}
    namespace = dict(zip(HOSTS, net.namespaces, strict=True))
    root = {host: tmp_path / host for host in HOSTS}
    # Every command runs in the host's namespace with `dynastore` meaning this checkout's CLI.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dynastore").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m dynastore "$@"\n')
    (bin_dir / "dynastore").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DYNASTORE_")}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2] / "src")
    env["PATH"] = f"{bin_dir}:{env.get('PATH', '/usr/bin:/bin')}"
    logs: list[Path] = []

    def localise(host: str, command: str) -> str:
        for readme, real in address.items():
            command = command.replace(readme, real)
        command = command.replace("/etc/dynastore", str(root[host] / "etc"))
        return command.replace("/var/lib/dynastore", str(root[host] / "data"))

    def run(host: str, command: str) -> str:
        result = subprocess.run(
            ["ip", "netns", "exec", namespace[host], "sh", "-c", localise(host, command)],
            capture_output=True, text=True, timeout=60, check=False, env=env, cwd=tmp_path,
        )  # fmt: skip
        assert result.returncode == 0, f"{host}$ {command}\n{result.stdout}{result.stderr}"
        return result.stdout

    outputs: dict[str, str] = {}
    for prompt, command in guide_steps(GUIDE):
        if prompt == "all":
            for host in HOSTS:
                outputs[command] = run(host, command)
            continue
        if " node " in f" {command} " and command.startswith("dynastore node"):
            index = HOSTS.index(prompt)
            log = tmp_path / f"{prompt}.log"
            logs.append(log)
            with open(log, "ab") as out:
                procs.append(
                    subprocess.Popen(
                        [
                            "ip",
                            "netns",
                            "exec",
                            namespace[prompt],
                            "sh",
                            "-c",
                            "exec " + localise(prompt, command),
                        ],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        env=env,
                        cwd=tmp_path,
                    )
                )
            # As an operator would, wait for the node to serve before the next host's command.
            health = f"http://{net.addresses[index]}:8098/health"
            wait_for(lambda url=health: http_json(url)["status"] == "ok", 60, f"{prompt} to serve", logs, procs)
            continue
        if "cluster status" in command:
            # The guide's status is read once every member is valid and owns partitions.
            def settled() -> bool:
                status = http_json(f"http://{net.addresses[0]}:8098/admin/status")
                members = status["members"]  # type: ignore[index]
                return len(members) == 3 and all(
                    m["status"] == "valid" and m["reachable"] and m["partitions"] > 0 and status["transition"] is None  # type: ignore[index]
                    for m in members
                )

            wait_for(settled, 90, "the three members to be valid, up and owning partitions", logs, procs)
        outputs[command] = run(prompt, command)
        if "head -c 32" in command:
            # The guide's prose: copy the secret file to the same path on every host.
            for host in HOSTS[1:]:
                shutil.copy2(root["host-a"] / "etc" / "secret", root[host] / "etc" / "secret")

    check = next(out for cmd, out in outputs.items() if cmd.startswith("dynastore config check"))
    assert "OK" in check
    status = next(out for cmd, out in outputs.items() if "cluster status" in cmd)
    for i, name in enumerate("abc"):
        assert re.search(rf"\b{name}\s+valid\s+up\b.*{re.escape(net.addresses[i])}:9000 http 8098", status), status
    ready = json.loads(next(out for cmd, out in outputs.items() if "/ready" in cmd))
    assert ready["ready"] is True and ready["owners_up"] == 3, ready
    assert next(out for cmd, out in outputs.items() if cmd.startswith("dynastore get")).strip() == '{"total": 9.5}'
    # Peers are told the advertised address, never the wildcard the nodes are bound to.
    ring = http_json(f"http://{net.addresses[1]}:8098/admin/status")
    assert {m["host"] for m in ring["members"]} == set(net.addresses[:3])  # type: ignore[index]
