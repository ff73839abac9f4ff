"""The `dynastore` command where no node is needed: --version, every bench subcommand's help, the group
helps, --json on every reading command, and bad input (a --node that is no address, a missing CA,
contradictory get options) refused as a usage error (status 2) in one line, before anything is sent.
The same commands against a real node are in tests/integration/test_cli_processes.py."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from dynastore import __version__
from dynastore.addresses import node_url
from dynastore.cli import main


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_version_prints_the_packages_version() -> None:
    """`dynastore --version` is `dynastore X.Y.Z`, X.Y.Z being dynastore.__version__."""
    assert invoke("--version") == (0, f"dynastore {__version__}\n")


# Each benchmark's own options (argparse's), which `--help` must list rather than click's EXTRA argument.
BENCH_OPTIONS = {
    "sim-scale": ["--nodes", "--ring-sizes", "--n", "--seed", "--heartbeat-interval-ms", "--out"],
    "cost": ["--rate", "--seconds", "--runs", "--security", "--json"],
    "repair": ["traffic", "pacing", "--keys", "--differences", "--rate", "--target-ms", "--runs"],
    "detection": ["--runs", "--set"],
    "scale": ["--sizes", "--out", "--data-dir", "--keep", "--duration", "--connections", "--load-connections", "--set"],
    "partitioning": ["--nodes", "--n", "--tokens", "--keys", "--requests", "--trials", "--seed", "--load"],
    "ycsb": ["--target", "--workload", "--records", "--duration", "--url", "--out"],
    "paper": ["--workload", "--paper-nodes", "--paper-rate"],
    "wrk": [
        "--target",
        "--duration",
        "--keys",
        "--connections",
        "--set",
        "--out",
        "--faults",
        "--fault-seconds",
        "--fault-ops",
    ],
}


def test_every_bench_subcommand_is_covered_here() -> None:
    """A bench command added later must say here which options its help lists."""
    bench = main.commands["bench"]
    assert isinstance(bench, click.Group)
    assert set(bench.commands) == set(BENCH_OPTIONS)


@pytest.mark.parametrize("name", sorted(BENCH_OPTIONS))
def test_every_bench_subcommands_help_lists_its_options(name: str) -> None:
    """`dynastore bench NAME --help` is the benchmark's own help: every option it takes is listed."""
    code, output = invoke("bench", name, "--help")
    assert code == 0, output
    assert f"usage: dynastore bench {name}" in output
    missing = [option for option in BENCH_OPTIONS[name] if option not in output]
    assert missing == []
    assert "issue " not in output


def test_the_repair_measurements_list_their_own_options() -> None:
    """Each of `bench repair traffic|pacing --help` lists its options with what they mean."""
    assert "--segments" in invoke("bench", "repair", "traffic", "--help")[1]
    assert "--target-ms" in invoke("bench", "repair", "pacing", "--help")[1]


def test_a_bench_option_out_of_range_is_a_usage_error() -> None:
    """The bounds `bench partitioning` checked in click hold in the module's own parser."""
    code, output = invoke("bench", "partitioning", "--nodes", "0")
    assert code == 2 and "--nodes must be from 1 to 1000" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "etcd,mongo"], "subset of dynastore,etcd,redis"),
        (["--duration", "0"], "0 is not from 1 to 600"),
        (["--connections", "many"], "'many' is not an integer"),
        (["--set", "durable"], "--set takes NAME=VALUE"),
        (["--faults", "--fault-ops", "put,delete"], "operations are put, get or put,get"),
    ],
)
def test_bad_wrk_bench_options_are_usage_errors_before_anything_starts(args: list[str], message: str) -> None:
    """`bench wrk` refuses an unknown target, an out-of-range number or a malformed --set (exit 2)."""
    code, output = invoke("bench", "wrk", *args)
    assert code == 2 and message in output


@pytest.mark.parametrize("group", ["cluster", "security", "bucket-type"])
def test_a_groups_help_names_every_command_in_it(group: str) -> None:
    """The one-line summary of a group (`dynastore cluster --help`) names each of its commands."""
    command = main.commands[group]
    assert isinstance(command, click.Group)
    summary = (command.help or "").split("\n\n")[0]
    assert [name for name in command.commands if name not in summary] == []


# Every command that reads, with the arguments it needs.
READING_COMMANDS = [
    ("cluster", "status"),
    ("cluster", "ring"),
    ("bucket-type", "status"),
    ("bucket-type", "list"),
    ("security", "status"),
    ("security", "list"),
    ("get",),
    ("dt", "get"),
]


@pytest.mark.parametrize("path", READING_COMMANDS, ids=" ".join)
def test_every_reading_command_takes_json(path: tuple[str, ...]) -> None:
    """--json is on every command that reads, declared once (JSON_OPTION) so its help reads the same."""
    command: click.Command = main
    for name in path:
        assert isinstance(command, click.Group)
        command = command.commands[name]
    options = {opt: param for param in command.params for opt in param.opts}
    assert "--json" in options
    assert options["--json"].help == "Print the answer as JSON (for scripts) instead of text."


@pytest.mark.parametrize(
    ("given", "tls", "url"),
    [
        ("127.0.0.1:8098", False, "http://127.0.0.1:8098"),
        ("localhost:8099", False, "http://localhost:8099"),
        ("node1", False, "http://node1:8098"),
        ("node1", True, "https://node1:8098"),
        ("[::1]:8100", False, "http://[::1]:8100"),
        ("[::1]", False, "http://[::1]:8098"),
        ("http://10.0.0.1:8098/", True, "http://10.0.0.1:8098"),
        ("https://db.example:443", False, "https://db.example:443"),
        (" 127.0.0.1:8098 ", False, "http://127.0.0.1:8098"),
    ],
)
def test_a_node_address_without_a_scheme_gets_one(given: str, tls: bool, url: str) -> None:
    """host[:port] is http://, or https:// when a CA is given; port 8098 when none is; a URL is kept."""
    assert node_url(given, tls=tls) == url


@pytest.mark.parametrize(
    "bad",
    [
        "ftp://127.0.0.1:8098",
        "127.0.0.1:99999",
        "127.0.0.1:0",
        "node1:port",
        "http://",
        "",
        "a b:80",
        "h:1?x=1",
        "http://h:80/x/",
    ],
)
def test_a_node_address_that_is_none_is_refused_in_one_line(bad: str) -> None:
    """A bad --node is a usage error (2) naming --node, for the admin and the data commands alike."""
    with pytest.raises(ValueError):
        node_url(bad)
    for args in (("cluster", "status"), ("get", "b", "k"), ("security", "add-user", "u", "--password-file", "/x")):
        code, output = invoke(*args, "--node", bad)
        assert code == 2, output
        assert "Invalid value for '--node'" in output


def test_a_missing_ca_file_is_a_usage_error(tmp_path: Path) -> None:
    """--ca names a file that is not there: status 2, naming --ca, not a traceback at the first request."""
    code, output = invoke("get", "b", "k", "--node", "localhost:1", "--ca", str(tmp_path / "ca.pem"))
    assert code == 2 and "Invalid value for '--ca'" in output


@pytest.mark.parametrize("args", [("-o", "FILE", "--raw"), ("--json", "--raw"), ("--json", "-o", "FILE")])
def test_get_options_that_contradict_each_other_are_a_usage_error(args: tuple[str, ...], tmp_path: Path) -> None:
    """-o with --raw, or --json with either: status 2 before any node is asked or any file written."""
    target = tmp_path / "value"
    argv = [str(target) if a == "FILE" else a for a in args]
    code, output = invoke("get", "b", "k", "--node", "localhost:1", *argv)
    assert code == 2, output
    assert not target.exists()


def test_the_benchmarks_url_takes_a_node_address_as_node_does() -> None:
    """`bench ycsb --url` reads an address like --node: host:port is fine, anything else is refused (2)."""
    code, output = invoke("bench", "ycsb", "--url", "ftp://127.0.0.1:8098")
    assert code == 2 and "--url: ftp:// is not a node's address" in output
