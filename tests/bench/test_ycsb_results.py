"""YCSB results: outcomes merged across driver processes, the run records, table, Markdown and paper comparisons."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dynastore.bench.ycsb import MODERATE, PEAK, BenchConfig, sessions, write_outputs
from dynastore.bench.ycsb_driver import ERROR_SAMPLES_MAX, Outcome, merge_outcomes
from dynastore.bench.ycsb_report import (
    format_paper,
    format_table,
    markdown,
    paper_comparisons,
    ratios,
    run_record,
)


def _outcome(latencies_ms: dict[str, list[float]], *, window_s: float = 10.0, errors: int = 0) -> Outcome:
    outcome = Outcome(window_s=window_s, driver_cpu_s=window_s / 2)
    for op, values in latencies_ms.items():
        for value in values:
            outcome.histogram(op).record(int(value * 1e6))
        outcome.operations += len(values)
    for i in range(errors):
        outcome.failed("update", f"boom {i}")
    return outcome


def _run(target: str, workload: str, read_ms: float, update_ms: float, **extra: Any) -> dict[str, Any]:
    rate = extra.pop("rate_per_s", None)
    nodes = extra.pop("nodes", 3)
    outcome = _outcome({"read": [read_ms] * 100, "update": [update_ms] * 100})
    return run_record(target, workload, outcome, concurrency=8, nodes=nodes, rate_per_s=rate, **extra)


def test_outcomes_of_driver_processes_add_up() -> None:
    """Merging per-process outcomes sums operations, errors and CPU, merges histograms, keeps the window."""
    first = _outcome({"read": [1.0, 2.0], "update": [3.0]}, errors=4)
    first.server_cpu_s = 3.0
    second = _outcome({"read": [4.0]}, errors=ERROR_SAMPLES_MAX)
    second.counters = {"reads_with_siblings": 2}
    merged = merge_outcomes([first, second])
    assert merged.operations == 4
    assert merged.histograms["read"].total == 3 and merged.histograms["update"].total == 1
    assert merged.histograms["read"].max_ns == 4_000_000
    assert merged.errors == {"update": 4 + ERROR_SAMPLES_MAX}
    assert len(merged.error_samples) == ERROR_SAMPLES_MAX
    assert merged.window_s == 10.0
    assert merged.driver_cpu_s == 10.0
    # Only one process samples the servers, so their CPU time is not counted twice.
    assert merged.server_cpu_s == 3.0
    assert merged.counters == {"reads_with_siblings": 2}


def test_a_run_record_reports_throughput_and_percentiles_per_operation() -> None:
    """A run's record has overall and per-operation throughput, errors, and every latency percentile in ms."""
    record = run_record(
        "etcd", "A", _outcome({"read": [1.0] * 30, "update": [2.0] * 10}, errors=2), concurrency=8, nodes=3
    )
    assert record["throughput_ops_s"] == 4.0
    assert record["errors"] == 2 and len(record["error_samples"]) == 2
    assert record["mode"] == "closed loop" and record["rate_per_s"] is None
    assert record["driver_cpu_cores"] == 0.5 and record["server_cpu_cores"] is None
    read = record["ops"]["read"]
    assert read["count"] == 30 and read["throughput_ops_s"] == 3.0
    assert set(read["latency_ms"]) == {"mean", "min", "p50", "p95", "p99", "p99.9", "max"}
    assert abs(read["latency_ms"]["p99.9"] - 1.0) < 0.002
    assert record["ops"]["update"]["errors"] == 2


def test_a_run_with_nothing_measured_still_makes_strict_json() -> None:
    """An empty window reports zeros rather than NaN, so results.json stays valid JSON."""
    record = run_record("noop", "C", Outcome(), concurrency=1, nodes=0)
    json.dumps(record, allow_nan=False)
    assert record["throughput_ops_s"] == 0.0


def test_the_paper_comparisons_pair_runs_of_the_same_cluster_size_and_rate() -> None:
    """Server/client ratios pair dynastore-http and -ring runs alike in nodes and rate; durable/buffered at peak."""
    runs = [
        _run("dynastore-http", "A", 10.0, 20.0),
        _run("dynastore-ring", "A", 5.0, 10.0),
        _run("dynastore-http", "A", 4.0, 8.0, nodes=5, variant="5 nodes"),
        _run("dynastore-ring", "A", 1.0, 2.0, nodes=5, variant="5 nodes"),
        _run("dynastore-http", "A", 2.0, 4.0, nodes=5, variant="5 nodes", rate_per_s=100.0),
        _run("dynastore-ring", "A", 1.0, 1.0, nodes=5, variant="5 nodes", rate_per_s=100.0),
        _run("dynastore-http-buffered", "A", 10.0, 4.0),
    ]
    paper = paper_comparisons(runs)
    pairs = [(c["nodes"], c["rate_per_s"]) for c in paper["coordination"]]
    assert pairs == [(3, None), (5, None), (5, 100.0)]
    three, five, moderate = paper["coordination"]
    assert three["samples"]["read"] == {"server-driven": 100, "client-driven": 100}
    assert abs(three["latency_ms"]["read mean"]["server/client"] - 2.0) < 0.01
    assert abs(five["latency_ms"]["write p99.9"]["server/client"] - 4.0) < 0.01
    assert abs(moderate["latency_ms"]["write mean"]["server/client"] - 4.0) < 0.01
    buffered = paper["buffered_writes"]
    assert buffered["nodes"] == 3
    assert abs(buffered["latency_ms"]["write p99.9"]["durable/buffered"] - 5.0) < 0.01
    text = format_paper(paper)
    assert "5 nodes, workload A at 100 ops/s (open loop)" in text
    assert "Durable vs buffered writes, 3 nodes" in text


def test_ratios_compare_each_dynastore_target_with_each_peer_that_ran() -> None:
    """Throughput and p99 ratios are dynastore over the peer, per workload, for the peers present only."""
    runs = [_run("dynastore-http", "A", 4.0, 8.0), _run("etcd", "A", 2.0, 2.0), _run("redis", "B", 1.0, 1.0)]
    found = ratios(runs)
    assert [(r["workload"], r["dynastore"], r["peer"]) for r in found] == [("A", "dynastore-http", "etcd")]
    assert found[0]["throughput"] == 1.0
    assert abs(found[0]["read_p99"] - 2.0) < 0.01 and abs(found[0]["write_p99"] - 4.0) < 0.01


def _doc(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "benchmark": "ycsb",
        "command": "dynastore bench ycsb --target all",
        "started_at": "2025-01-01T00:00:00+00:00",
        "elapsed_s": 90.0,
        "machine": {
            "cpu": "Test CPU",
            "vcpus": 2,
            "effective_cores": 1.0,
            "memory_gib": 24.0,
            "os": "Debian",
            "python": "3.11",
        },
        "settings": {
            "records": 100,
            "value_bytes": 1000,
            "zipf_theta": 0.99,
            "concurrency": 8,
            "processes": 1,
            "warmup_s": 1.0,
            "duration_s": 5.0,
            "run_order": ["A"],
        },
        "versions": {"etcd": "etcd Version: 3.4.23"},
        "loads": [],
        "runs": runs,
        "skipped": [{"target": "pysyncobj", "reason": "the pysyncobj Python package is not installed"}],
        "failed": [],
        "ratios": ratios(runs),
        "paper": paper_comparisons(runs),
    }


def test_the_table_and_markdown_show_every_run_ratio_and_skip(tmp_path: Path) -> None:
    """The text table lists each run and operation; results.md has throughput, latency, ratios, paper, notes."""
    runs = [
        _run("etcd", "A", 2.0, 3.0),
        _run("dynastore-http", "A", 4.0, 6.0),
        _run("dynastore-ring", "A", 3.0, 5.0),
        _run("dynastore-http-buffered", "A", 4.0, 2.0),
    ]
    table = format_table(runs)
    lines = table.splitlines()
    assert lines[0].split()[:4] == ["target", "wl", "operation", "ops/s"]
    assert [line.split()[0] for line in lines[1:] if not line.startswith(" ")] == [
        "etcd",
        "dynastore-http",
        "dynastore-ring",
        "dynastore-http-buffered",
    ]
    doc = _doc(runs)
    page = markdown(doc)
    for heading in ("## Throughput", "## Latency", "## dynastore relative to its peers", "## The Dynamo paper"):
        assert heading in page
    assert "| dynastore-http | etcd |" in page.replace("| A | ", "| ")
    assert "pysyncobj skipped: the pysyncobj Python package is not installed" in page
    written = write_outputs(doc, tmp_path / "r.json", tmp_path / "out")
    assert json.loads((tmp_path / "r.json").read_text())["runs"][0]["target"] == "etcd"
    assert (tmp_path / "out" / "results.md").read_text() == page
    assert {p.name for p in written} >= {"r.json", "results.json", "results.md"}


def test_the_paper_adds_only_the_runs_its_comparisons_need() -> None:
    """--paper adds buffered writes on workload A at the main cluster size, and both coordinations on a
    larger cluster at peak and at a moderate rate; targets asked for keep every workload in run order."""
    config = BenchConfig(targets=("etcd", "dynastore-http"), workloads=("F", "A", "C"), paper=True)
    plan = [(s.target, s.nodes, s.variant, s.plan) for s in sessions(config)]
    assert plan == [
        ("etcd", 3, "", (("C", PEAK), ("A", PEAK), ("F", PEAK))),
        ("dynastore-http", 3, "", (("C", PEAK), ("A", PEAK), ("F", PEAK))),
        ("dynastore-http-buffered", 3, "", (("A", PEAK),)),
        ("dynastore-http", 5, "5 nodes", (("A", PEAK), ("A", MODERATE))),
        ("dynastore-ring", 5, "5 nodes", (("A", PEAK), ("A", MODERATE))),
    ]
    # Without a workload that updates there is nothing for the paper's comparisons to measure.
    assert [s.target for s in sessions(BenchConfig(targets=("noop",), workloads=("C",), paper=True))] == ["noop"]
