"""`dynastore bench wrk` end to end against a real 3-node cluster for 1 s per operation and placement:
every run answers without errors, the spread runs drive every node, and the reports name every node's CPU."""

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
    """GET then PUT for 1 s each, clients on node0 then spread, with a 100-key space: requests succeed,
    CPU is read for 3 nodes and every wrk."""
    out = tmp_path / "results"
    command = [sys.executable, "-m", "dynastore", "bench", "wrk", "--target", "dynastore", "--duration", "1"]
    command += ["--warmup", "0", "--keys", "100", "--no-cores", "--out", str(out)]
    # Faster gossip only so that the cluster is ready sooner; the load is the benchmark's own.
    command += [arg for pair in FAST for arg in ("--set", pair)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads((out / "wrk.json").read_text())
    assert [(run["target"], run["op"], run["placement"]) for run in doc["runs"]] == [
        ("dynastore", "get", "one"),
        ("dynastore", "get", "spread"),
        ("dynastore", "put", "one"),
        ("dynastore", "put", "spread"),
    ]
    for run in doc["runs"]:
        assert run["requests"] > 0 and run["errors_total"] == 0, run
        assert [cpu["name"] for cpu in run["server_cpu"]] == ["node0", "node1", "node2"]
        assert sum(cpu["cpu_s"] for cpu in run["server_cpu"]) > 0 and run["generator_cpu_s"] >= 0
        assert sum(g["requests"] for g in run["generators"]) == run["requests"]
    spread = doc["runs"][1]
    # One wrk per node, the 50 connections split between them, every node answering its share.
    assert [(g["node"], g["connections"]) for g in spread["generators"]] == [
        ("node0", 17),
        ("node1", 17),
        ("node2", 16),
    ]
    assert all(g["requests"] > 0 for g in spread["generators"]), spread["generators"]
    assert spread["latency_merge"] == "exact" and spread["latency_ms"]["p99"] > 0
    assert doc["settings"]["dynastore_overrides"] == list(FAST)
    text = (out / "wrk.md").read_text()
    assert "| dynastore | one node | GET |" in text and "| dynastore | spread | PUT |" in text
