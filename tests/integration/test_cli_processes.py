"""Real processes: the `dynastore` command against a running node — a --node without a scheme, --json on
every command that reads, the exit codes (0 ok, 1 error, 2 usage, 3 not found), and binary values that
`get -o FILE` and `get --raw` give back byte for byte."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from dynastore.cli import main
from dynastore.localcluster import LocalCluster, free_port

MakeCluster = Callable[..., LocalCluster]

ONE_NODE = ("n_val=1", "r=1", "w=1")


@dataclass
class Ran:
    returncode: int
    stdout: bytes
    stderr: bytes


def run(*args: str, stdin: bytes | None = None) -> Ran:
    """`dynastore ARGS` against the real node, run in this process (click's runner: the same code a
    user's command runs, without an interpreter start-up for each of some thirty commands)."""
    result = CliRunner().invoke(main, list(args), input=stdin, env={"DYNASTORE_CA": None})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout_bytes, result.stderr_bytes or b"")


def run_all(*commands: tuple[str, ...]) -> list[Ran]:
    """Commands that do not depend on each other."""
    return [run(*args) for args in commands]


def ok(*args: str, stdin: bytes | None = None) -> bytes:
    result = run(*args, stdin=stdin)
    assert result.returncode == 0, (args, result.returncode, result.stderr)
    return result.stdout


def one_line_error(result: Ran, code: int) -> str:
    """The status is `code` and stderr is one line of error, no traceback."""
    err = result.stderr.decode()
    assert result.returncode == code, (result.returncode, err)
    assert "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    return err


def test_a_node_without_a_scheme_json_on_every_reading_command_and_the_exit_codes(
    make_cluster: MakeCluster, tmp_path: Path
) -> None:
    """host:port works as --node; each reading command's --json is one JSON document of what it read;
    a missing key, bucket type or data type exits 3, an unreachable node 1 (a bad --node is 2: see
    tests/test_cli.py, which needs no node for it)."""
    cluster = make_cluster(1, *ONE_NODE)
    node = cluster[0]
    plain = f"127.0.0.1:{node.http_port}"
    by_name = f"localhost:{node.http_port}"

    assert b"stored" in ok("put", "fruit", "apple", "red", "--node", plain)
    assert ok("get", "fruit", "apple", "--node", by_name) == b"red\n"
    assert f"seen from {node.name}".encode() in ok("cluster", "status", "--node", plain)

    ok("bucket-type", "create", "counters", '{"props":{"datatype":"counter"}}', "--node", plain)
    ok("bucket-type", "activate", "counters", "--node", plain)
    ok("dt", "update", "counters", "pages", "home", '{"increment": 5}', "--node", plain)

    # --json: every command that reads prints one JSON document.
    secret = ("--secret-file", str(cluster.root / "cluster.secret"))
    results = run_all(
        ("cluster", "status", "--json", "--node", plain),
        ("cluster", "ring", "--json", "--node", plain),
        ("get", "fruit", "apple", "--json", "--node", plain),
        ("bucket-type", "list", "--json", "--node", plain),
        ("bucket-type", "status", "counters", "--json", "--node", plain),
        ("dt", "get", "counters", "pages", "home", "--json", "--node", plain),
        ("security", "status", "--json", "--node", plain, *secret),
        ("security", "list", "--json", "--node", plain, *secret),
    )
    assert [r.returncode for r in results] == [0] * len(results), [r.stderr for r in results]
    status, ring, fetched, types, described, counter, security, listed = (json.loads(r.stdout) for r in results)
    assert [m["name"] for m in status["members"]] == [node.name]
    assert set(ring["owners"]) == {node.name} and ring["ring_size"] == len(ring["owners"])
    assert fetched["key"] == "apple" and fetched["context"]
    assert [(s["value"], base64.b64decode(s["value_base64"])) for s in fetched["siblings"]] == [("red", b"red")]
    assert {"name": "counters", "active": True} in [{k: t[k] for k in ("name", "active")} for t in types["types"]]
    assert described["active"] is True and described["props"]["datatype"] == "counter"
    assert counter["type"] == "counter" and counter["value"] == 5
    assert security == {"enabled": False, "users": 0}
    assert listed["enabled"] is False and listed["users"] == []

    # 3: not found, wherever a thing named is absent; nothing on stdout.
    absent = (
        ("get", "fruit", "pear", "-o", str(tmp_path / "pear")),
        ("delete", "fruit", "pear"),
        ("bucket-type", "status", "no-such-type", "--json"),
        ("dt", "get", "counters", "pages", "nowhere"),
        ("dt", "get", "no-such-type", "pages", "home"),
    )
    for args, missing in zip(absent, run_all(*((*args, "--node", plain) for args in absent)), strict=True):
        assert "not found" in one_line_error(missing, 3).lower() or "unknown" in missing.stderr.decode(), args
        assert missing.stdout == b"", args
    assert not (tmp_path / "pear").exists()
    ok("delete", "fruit", "apple", "--node", plain)
    deleted = run("get", "fruit", "apple", "--node", plain)
    assert "(deleted)" in one_line_error(deleted, 3)

    # 1: an error (nothing answers there), one line, through the data client and the admin calls.
    closed = f"127.0.0.1:{free_port()}"
    for args in (("get", "fruit", "apple"), ("bucket-type", "list", "--json")):
        assert "127.0.0.1" in one_line_error(run(*args, "--node", closed), 1)


def test_binary_values_round_trip_through_get_output_and_raw(make_cluster: MakeCluster, tmp_path: Path) -> None:
    """Random bytes put from standard input come back identical from `get -o FILE` and `get --raw`;
    with siblings, -o refuses (exit 1, naming the count, writing nothing) until --sibling N picks one."""
    cluster = make_cluster(1, *ONE_NODE)
    url = cluster[0].url
    payload = os.urandom(4096) + b"\x00\xff\r\n\x80" + bytes(range(256))
    ok("put", "blobs", "b1", "-", "--content-type", "application/octet-stream", "--node", url, stdin=payload)

    out = tmp_path / "b1.bin"
    assert ok("get", "blobs", "b1", "-o", str(out), "--node", url) == b""
    assert out.read_bytes() == payload
    assert ok("get", "blobs", "b1", "--raw", "--node", url) == payload
    shown = ok("get", "blobs", "b1", "--node", url)
    assert b"bytes of binary data" in shown and payload not in shown
    as_json = json.loads(ok("get", "blobs", "b1", "--json", "--node", url))
    assert as_json["siblings"][0]["value"] is None
    assert base64.b64decode(as_json["siblings"][0]["value_base64"]) == payload

    # Two blind writes of one key are siblings.
    first, second = os.urandom(100), os.urandom(200)
    ok("put", "blobs", "twins", "-", "--node", url, stdin=first)
    ok("put", "blobs", "twins", "-", "--node", url, stdin=second)
    twins = tmp_path / "twins.bin"
    twins.write_bytes(b"left alone")
    refused = run("get", "blobs", "twins", "-o", str(twins), "--node", url)
    assert "2 siblings" in one_line_error(refused, 1) and "--sibling" in refused.stderr.decode()
    assert twins.read_bytes() == b"left alone"
    assert run("get", "blobs", "twins", "--raw", "--node", url).stdout == b""
    ok("get", "blobs", "twins", "-o", str(twins), "--sibling", "2", "--node", url)
    picked = {twins.read_bytes(), ok("get", "blobs", "twins", "--raw", "--sibling", "1", "--node", url)}
    assert picked == {first, second}
    beyond = run("get", "blobs", "twins", "--raw", "--sibling", "3", "--node", url)
    assert "2 siblings" in one_line_error(beyond, 1)
