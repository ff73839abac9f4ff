"""Real processes: a node takes its identity from a config file, the environment and flags in that
order; /health and /ready answer probes (open with security on; one dead node of three leaves the
others ready); `up --config` gives every node the file and the log flags; `config check` lists every
problem; --log-level is validated and --log-format json writes one object per line."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cluster_settings import FAST
from http_util import call
from proc_util import run_dynastore, stop_process_groups

from dynastore.localcluster import LocalCluster, free_port, http_json

MakeCluster = Callable[..., LocalCluster]


def dynastore(*args: str, env: dict[str, str] | None = None, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """`dynastore ARGS` with exactly this test's DYNASTORE_* variables."""
    return run_dynastore(*args, env=env, timeout_s=timeout_s, clean_env=True)


def _clean_env() -> dict[str, str]:
    """This process's environment without DYNASTORE_* variables, so each test sets exactly its own."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DYNASTORE_")}


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what} (last error: {last})")


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start `dynastore ...` processes in their own process groups; all are killed afterwards."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(
        *args: str, env: dict[str, str] | None = None, log: Path, stdout: int | None = None
    ) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dynastore", *args],
                stdout=stdout if stdout is not None else out,
                stderr=out,
                start_new_session=True,
                env={**_clean_env(), **(env or {})},
            )
        procs.append(proc)
        return proc

    yield start
    stop_process_groups(procs)


def test_a_node_takes_its_identity_from_the_file_then_the_environment_then_flags(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """Every node option and setting from the [node] table, overridden by DYNASTORE_* variables, then
    by flags; DYNASTORE_USER (no setting) is left alone; the member record advertises advertise_host."""
    file_port, env_port, peer_port = free_port(), free_port(), free_port()
    config = tmp_path / "dynastore.toml"
    config.write_text(
        f'cluster_name = "from-file"\nn_val = 1\nr = 1\nw = 1\n'
        f'[node]\nname = "from-file"\nhost = "127.0.0.1"\nadvertise_host = "localhost"\n'
        f"http_port = {file_port}\npeer_port = {peer_port}\npb_port = {free_port()}\n"
        f'data_dir = "{tmp_path / "data"}"\nlog_format = "json"\n'
    )
    env = {
        "DYNASTORE_NODE_HTTP_PORT": str(env_port),
        "DYNASTORE_NODE_NAME": "from-env",
        "DYNASTORE_CLUSTER_NAME": "from-env",
        "DYNASTORE_USER": "not-a-setting",
    }
    log = tmp_path / "node.log"
    proc = spawn("node", "--config", str(config), "--name", "from-flag", env=env, log=log)
    url = f"http://127.0.0.1:{env_port}"
    wait_for(lambda: call("GET", url + "/health", timeout_s=1)[0] == 200, 30, "the node to serve")
    status = http_json(url + "/admin/status")
    assert (status["node"], status["cluster"]) == ("from-flag", "from-env")
    [me] = status["members"]
    assert (me["host"], me["http_port"], me["peer_port"]) == ("localhost", env_port, peer_port)
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", file_port)) != 0, "the file's http_port was overridden"
    # With n_val=1 from the file, one node is enough for the default bucket's quorums.
    assert json.loads(call("GET", url + "/ready")[2])["ready"] is True
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert lines and all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    assert any("advertised as localhost" in line["msg"] for line in lines)


def test_bad_identity_from_any_source_is_one_clear_line_and_nothing_starts(tmp_path: Path) -> None:
    """A bad variable is named; a missing name says where a name may come from; a wildcard bind
    without an advertised address is refused; --log-level is one of four words (was: any word)."""
    data = ["--data-dir", str(tmp_path / "d")]
    bad_env = dynastore("node", "--name", "a", *data, env={"DYNASTORE_NODE_PEER_PORT": "ninety"})
    assert bad_env.returncode == 1 and "DYNASTORE_NODE_PEER_PORT" in bad_env.stderr, bad_env.stderr
    bad_setting = dynastore("node", "--name", "a", *data, env={"DYNASTORE_R": "5"})
    assert bad_setting.returncode == 1 and "r must be between 1 and n_val" in bad_setting.stderr
    nameless = dynastore("node", *data)
    assert nameless.returncode == 1 and "DYNASTORE_NODE_NAME" in nameless.stderr
    secret = tmp_path / "secret"
    secret.write_text("a-secret-of-enough-length\n")
    wildcard = dynastore("node", "--name", "a", *data, "--host", "0.0.0.0", "--set", f"cluster_secret_file={secret}")
    assert wildcard.returncode == 1 and "--advertise-host" in wildcard.stderr, wildcard.stderr
    # Bound to every interface but advertised on loopback is still on the network: the secret is needed.
    open_wildcard = dynastore("node", "--name", "a", *data, "--host", "0.0.0.0", "--advertise-host", "127.0.0.1")
    assert open_wildcard.returncode == 1 and "cluster_secret must be set" in open_wildcard.stderr
    assert "--host 0.0.0.0" in open_wildcard.stderr
    bad_level = dynastore("node", "--name", "a", *data, "--log-level", "loud")
    assert bad_level.returncode == 2 and "'loud' is not one of" in bad_level.stderr, bad_level.stderr
    assert not (tmp_path / "d").exists()


def test_health_and_ready_answer_probes_and_one_dead_node_of_three_leaves_the_others_ready(
    make_cluster: MakeCluster,
) -> None:
    """Open with security on (no credentials); /ready 200 on all three, still 200 on both others once
    one is killed and judged down, 503 with the reason on the last when a second dies."""
    cluster = make_cluster(3, "security_enabled=true", start=False)
    cluster.set_secure(True)
    cluster.start()
    cluster.wait_ready(60)
    for node in cluster.nodes:
        assert call("GET", node.url + "/stats")[0] == 401, "security is on"
        status, headers, body = call("GET", node.url + "/health")
        assert status == 200 and headers["Content-Type"].startswith("application/json")
        assert json.loads(body)["status"] == "ok"
        ready = json.loads(call("GET", node.url + "/ready")[2])
        assert ready == {
            "ready": True,
            "reason": "",
            "owners_up": 3,
            "owners": 3,
            "n_val": 3,
            "r": 2,
            "w": 2,
            "node": node.name,
        }
    cluster[2].kill()
    cluster.wait(
        lambda: all(
            not m["reachable"] for n in cluster.nodes[:2] for m in n.status()["members"] if m["name"] == "node2"
        ),
        30,
        "node2 to be judged down",
    )
    for node in cluster.nodes[:2]:
        status, _, body = call("GET", node.url + "/ready")
        assert status == 200, body
        assert json.loads(body)["owners_up"] == 2
    cluster[1].kill()

    def unready() -> bool:
        status, _, body = call("GET", cluster[0].url + "/ready")
        return status == 503 and json.loads(body)["owners_up"] == 1

    cluster.wait(unready, 30, "node0 to say it is not ready")
    answer = json.loads(call("GET", cluster[0].url + "/ready")[2])
    assert answer["ready"] is False
    assert answer["reason"] == "1 of 3 owners believed up; the default bucket (n_val=3) needs 2 for r=2 and w=2"
    assert call("GET", cluster[0].url + "/health")[0] == 200, "alive though not ready"


def _consecutive_ports(count: int) -> int:
    for _ in range(50):
        base = free_port()
        ok = True
        for port in range(base + 1, base + count):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
        if ok:
            return base
    raise AssertionError("no run of free ports")


def test_up_with_a_config_file_gives_every_node_its_settings_and_the_log_flags(
    tmp_path: Path, spawn: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """The file's settings reach every node, its [node] table gives the bases of ports and data
    directory, --log-format json reaches the nodes' logs, and per-node options in the file are refused."""
    http, peer, pb = _consecutive_ports(2), _consecutive_ports(2), _consecutive_ports(2)
    data = tmp_path / "data"
    config = tmp_path / "up.toml"
    fast = "\n".join(f"{pair.split('=')[0]} = {pair.split('=')[1]}" for pair in FAST)
    config.write_text(
        f'cluster_name = "from-up-file"\n{fast}\n[node]\nhttp_port = {http}\npeer_port = {peer}\npb_port = {pb}\n'
        f'data_dir = "{data}"\n'
    )
    proc = spawn(
        "up", "--nodes", "2", "--config", str(config), "--log-format", "json", "--log-level", "DEBUG",
        log=tmp_path / "up.log", stdout=subprocess.PIPE,
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout
    threading.Thread(target=lambda: [lines.put(line.decode()) for line in stdout], daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + 90
    while "ready\n" not in seen:
        assert time.monotonic() < deadline, f"up never said ready: {seen}\n{(tmp_path / 'up.log').read_text()}"
        try:
            seen.append(lines.get(timeout=1))
        except queue.Empty:
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
    assert any(f"127.0.0.1:{http + 1}" in line for line in seen), seen
    for i in range(2):
        status = http_json(f"http://127.0.0.1:{http + i}/admin/status")
        assert status["cluster"] == "from-up-file"
        log = [json.loads(line) for line in (data / f"node-{i}.log").read_text().splitlines() if line.startswith("{")]
        assert log and {line["node"] for line in log} == {f"node{i}"}
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0

    per_node = tmp_path / "per-node.toml"
    per_node.write_text('[node]\nname = "a"\n')
    refused = dynastore("up", "--config", str(per_node), "--data-dir", str(tmp_path / "other"))
    assert refused.returncode == 1 and "[node] name" in refused.stderr, refused.stderr
    assert not (tmp_path / "other").exists()


def test_config_check_says_ok_in_one_line_or_lists_every_problem_naming_its_key(tmp_path: Path) -> None:
    """Exit 0 and one line; exit 1 with one line per problem (file keys, variables, the secret rule)."""
    secret = tmp_path / "secret"
    secret.write_text("a-secret-of-enough-length\n")
    good = tmp_path / "good.toml"
    good.write_text(
        f'cluster_secret_file = "{secret}"\n[node]\nname = "a"\nhost = "0.0.0.0"\nadvertise_host = "10.0.0.1"\n'
    )
    ok = dynastore("config", "check", str(good))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("\n") == 1 and "OK" in ok.stdout and "advertised as 10.0.0.1" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('n_val = "three"\nno_such = 1\n[node]\nhttp_port = 0\nseeds = ["10.0.0.1"]\n')
    result = dynastore("config", "check", str(bad), env={"DYNASTORE_W": "many", "DYNASTORE_CA": "left-alone"})
    assert result.returncode == 1
    problems = result.stderr.strip().splitlines()
    assert len(problems) == 5, result.stderr
    for key in ("n_val", "no_such", "[node] http_port", "[node] seeds", "DYNASTORE_W"):
        assert any(f"{bad}: {key}" in line for line in problems), (key, problems)
    # A network address without the secret: the rule a node would start with, named.
    open_file = tmp_path / "open.toml"
    open_file.write_text('[node]\nhost = "10.0.0.1"\n')
    result = dynastore("config", "check", str(open_file))
    assert result.returncode == 1 and "cluster_secret must be set" in result.stderr
    unreadable = dynastore("config", "check", str(tmp_path / "missing.toml"))
    assert unreadable.returncode == 1 and "cannot read config" in unreadable.stderr


def test_a_node_bound_to_loopback_but_advertised_on_the_network_does_not_take_loopback_clients_for_operators(
    spawn: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """Reached from other machines only through something on this one that forwards to it (a proxy),
    so a loopback source may be anyone: operator routes need the cluster secret's proof."""
    secret = tmp_path / "secret"
    secret.write_text("a secret of at least sixteen characters\n")
    secret.chmod(0o600)
    http_port, peer_port = free_port(), free_port()
    spawn(
        "node", "--name", "p1", "--host", "127.0.0.1", "--advertise-host", "10.254.0.1",
        "--http-port", str(http_port), "--peer-port", str(peer_port), "--pb-port", "0",
        "--data-dir", str(tmp_path / "d"),
        "--set", f"cluster_secret_file={secret}", "--set", "n_val=1", "--set", "r=1", "--set", "w=1",
        log=tmp_path / "p1.log",
    )  # fmt: skip
    url = f"http://127.0.0.1:{http_port}"
    wait_for(lambda: call("GET", url + "/health", timeout_s=1)[0] == 200, 60, "the node to serve")
    status, _, body = call("POST", url + "/admin/security/enable", b"")
    assert status == 403, (status, body)
    assert b"operator routes" in body
    # A proof with the secret still makes an operator.
    done = dynastore("security", "status", "--node", url, "--secret-file", str(secret))
    assert done.returncode == 0, done.stderr
