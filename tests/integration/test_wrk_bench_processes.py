"""`dynastore bench wrk` end to end against a real 3-node cluster for 1 s per operation: both runs
answer without errors and the reports name every node's CPU."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cluster_settings import FAST


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (scripts/install-bench-deps.sh)")
def test_bench_wrk_drives_a_dynastore_cluster_and_writes_both_reports(tmp_path: Path) -> None:
    """GET then PUT for 1 s each with a 100-key space: requests succeed, CPU is read for 3 nodes and wrk."""
    out = tmp_path / "results"
    command = [sys.executable, "-m", "dynastore", "bench", "wrk", "--target", "dynastore", "--duration", "1"]
    command += ["--warmup", "0", "--keys", "100", "--no-cores", "--out", str(out)]
    # Faster gossip only so that the cluster is ready sooner; the load is the benchmark's own.
    command += [arg for pair in FAST for arg in ("--set", pair)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((out / "wrk.json").read_text())
    assert [(run["target"], run["op"]) for run in doc["runs"]] == [("dynastore", "get"), ("dynastore", "put")]
    for run in doc["runs"]:
        assert run["requests"] > 0 and run["errors_total"] == 0, run
        assert [cpu["name"] for cpu in run["server_cpu"]] == ["node0", "node1", "node2"]
        assert sum(cpu["cpu_s"] for cpu in run["server_cpu"]) > 0 and run["generator_cpu_s"] >= 0
    assert doc["settings"]["dynastore_overrides"] == list(FAST)
    assert "| dynastore | GET |" in (out / "wrk.md").read_text()
