"""`dynastore bench ycsb` end to end: short runs of the noop target and of a real 3-node dynastore cluster.

These check what a run produces (its JSON fields, its clean-up), never how fast anything was.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from dynastore.bench import ycsb_peers
from dynastore.bench.ycsb import main
from dynastore.bench.ycsb_driver import DriverError, Phase, run_phase
from dynastore.bench.ycsb_targets import Endpoint
from dynastore.cli import main as cli_main

SHORT = ["--duration", "0.5", "--warmup", "0.2", "--no-core-check"]
RUN_FIELDS = {
    "target",
    "variant",
    "nodes",
    "workload",
    "mode",
    "rate_per_s",
    "concurrency",
    "throughput_ops_s",
    "operations",
    "errors",
    "error_samples",
    "window_s",
    "driver_cpu_cores",
    "server_cpu_cores",
    "counters",
    "ops",
}
DOC_FIELDS = {"benchmark", "command", "started_at", "elapsed_s", "machine", "settings", "versions", "loads", "runs"}
DOC_FIELDS |= {"skipped", "failed", "ratios", "paper"}


def _run(tmp_path: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "results.json"
    assert main([*args, "--json", str(out)]) == 0
    doc: dict[str, Any] = json.loads(out.read_text())
    assert set(doc) == DOC_FIELDS
    return doc


def _benchmark_node_processes(root: Path) -> list[str]:
    """Command lines of live dynastore node processes started by a YCSB run whose temporary
    directories are under `root`: this test's own, not those of a run someone else has going."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"{root}{os.sep}dynastore-ycsb-" in text and " node " in text:
            found.append(text)
    return found


def test_a_noop_run_reports_every_workload_operation_with_its_percentiles(tmp_path: Path) -> None:
    """The noop target runs the load and workloads A and F, and the JSON has each run's fields and operations."""
    doc = _run(tmp_path, "--target", "noop", "--workload", "A,F", "--records", "200", "--concurrency", "4", *SHORT)
    assert doc["loads"][0]["operations"] == 200
    assert [r["workload"] for r in doc["runs"]] == ["A", "F"]  # run order: by growing share of writes
    for run in doc["runs"]:
        assert set(run) == RUN_FIELDS
        assert run["target"] == "noop" and run["errors"] == 0 and run["operations"] > 0
    a, f = doc["runs"]
    assert set(a["ops"]) == {"read", "update"}
    assert set(f["ops"]) == {"read", "update", "read-modify-write"}
    for entry in (*a["ops"].values(), *f["ops"].values()):
        assert entry["count"] > 0
        assert set(entry["latency_ms"]) == {"mean", "min", "p50", "p95", "p99", "p99.9", "max"}
    assert doc["settings"]["run_order"] == ["A", "F"]
    assert doc["paper"] is None


def test_several_driver_processes_merge_into_one_result(tmp_path: Path) -> None:
    """With --processes 2 each process drives half the clients and the parent reports their merged counts."""
    doc = _run(
        tmp_path,
        "--target",
        "noop",
        "--workload",
        "C",
        "--records",
        "100",
        "--concurrency",
        "4",
        "--processes",
        "2",
        *SHORT,
    )
    (run,) = doc["runs"]
    assert doc["loads"][0]["operations"] == 100  # the two processes loaded disjoint halves
    assert run["ops"]["read"]["count"] == run["operations"] > 0
    assert doc["settings"]["processes"] == 2


# Imported at start-up by every Python process given its directory on PYTHONPATH: a spawned driver
# process (its command line ends in --multiprocessing-fork) starts as slowly as on a busy machine.
SLOW_START = """
import sys, time
if "--multiprocessing-fork" in sys.argv:
    time.sleep({delay_s})
"""


def test_driver_processes_that_start_slowly_still_all_run_their_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spawned driver processes that take longer to start than any fixed lead (as under a CPU hog)
    still run the whole measured window: the common start is set once every process is ready."""
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(SLOW_START.format(delay_s=3.5))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(slow), os.environ.get("PYTHONPATH", "")]))
    doc = _run(
        tmp_path,
        "--target",
        "noop",
        "--workload",
        "C",
        "--records",
        "20",
        "--concurrency",
        "2",
        "--processes",
        "2",
        *SHORT,
    )
    (run,) = doc["runs"]
    assert doc["loads"][0]["operations"] == 20
    assert run["ops"]["read"]["count"] == run["operations"] > 0


def test_a_driver_process_that_fails_is_reported_and_the_others_are_stopped() -> None:
    """A spawned driver's error comes back as one DriverError naming it, and no driver process is left."""
    phase = Phase(Endpoint("noop", ()), "no such workload", 10, 2, 0.1, 0.2, 1, 0.0, 100, 0.99)
    with pytest.raises(DriverError, match=r"driver process [01] failed: KeyError"):
        run_phase(phase, 2)
    assert [p for p in multiprocessing.active_children() if p.name.startswith("ycsb-driver-")] == []


def test_a_rate_makes_the_run_open_loop(tmp_path: Path) -> None:
    """--rate paces requests on a schedule (coordinated-omission-free) and the run says so."""
    doc = _run(tmp_path, "--target", "noop", "--workload", "B", "--records", "100", "--rate", "500", *SHORT)
    (run,) = doc["runs"]
    assert run["mode"] == "open loop" and run["rate_per_s"] == 500
    assert run["operations"] > 0


def test_a_peer_that_is_not_installed_is_skipped_with_a_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing etcd binary skips etcd, says what to install, and the other targets still run."""
    monkeypatch.setattr(ycsb_peers.shutil, "which", lambda name: None)
    doc = _run(tmp_path, "--target", "etcd,noop", "--records", "50", *SHORT)
    assert [r["target"] for r in doc["runs"]] == ["noop"]
    (skipped,) = doc["skipped"]
    assert skipped["target"] == "etcd" and "etcd-server" in skipped["reason"]
    assert "etcd: skipped: etcd is not installed" in capsys.readouterr().err


@pytest.mark.slow
def test_dynastore_http_against_a_real_three_node_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 3-node LocalCluster is started, loaded, run through workload A with no errors, and stopped afterwards."""
    # The run's temporary directories (its nodes' data) go under this test's own directory, so that
    # its node processes are told apart from those of any other run on the machine.
    runs_root = tmp_path / "runs"
    runs_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(runs_root))
    doc = _run(
        tmp_path,
        "--target",
        "dynastore-http",
        "--workload",
        "A",
        "--records",
        "50",
        "--concurrency",
        "4",
        "--duration",
        "1",
        "--warmup",
        "0.2",
        "--no-core-check",
    )
    assert doc["failed"] == [] and doc["skipped"] == []
    assert doc["loads"][0]["operations"] == 50 and doc["loads"][0]["errors"] == 0
    (run,) = doc["runs"]
    assert set(run) == RUN_FIELDS
    assert run["target"] == "dynastore-http" and run["nodes"] == 3 and run["variant"] == ""
    assert run["errors"] == 0, run["error_samples"]
    assert run["operations"] > 0 and run["throughput_ops_s"] > 0
    assert run["server_cpu_cores"] is not None
    assert {"read", "update"} <= set(run["ops"])
    assert run["ops"]["update"]["latency_ms"]["p99.9"] >= run["ops"]["update"]["latency_ms"]["p50"]
    assert doc["versions"]["dynastore-http"].startswith("dynastore")
    assert _benchmark_node_processes(runs_root) == []


def test_the_cli_passes_help_and_options_through_to_the_benchmark() -> None:
    """`dynastore bench ycsb --help` shows the benchmark's own options; a bad option is one line and status 2."""
    runner = CliRunner()
    shown = runner.invoke(cli_main, ["bench", "ycsb", "--help"])
    assert shown.exit_code == 0
    assert "--target" in shown.output and "--processes" in shown.output
    paper = runner.invoke(cli_main, ["bench", "paper", "--help"])
    assert paper.exit_code == 0 and "--paper-nodes" in paper.output
    refused = runner.invoke(cli_main, ["bench", "ycsb", "--workload", "Z"])
    assert refused.exit_code == 2
