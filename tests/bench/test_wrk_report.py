"""`dynastore bench wrk`: parsing of wrk's JSON line, redis-benchmark's output and /proc/PID/stat, the
per-second rows folded from per-request logs, and the Markdown reports (no servers)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dynastore.bench.wrk_report import (
    ParseError,
    Second,
    faults_markdown,
    headline_markdown,
    merge_wrk_docs,
    parse_log_line,
    parse_proc_stat,
    parse_redis_benchmark,
    parse_wrk_hist,
    parse_wrk_json,
    per_second,
    percentile_ms,
    ratios,
    split_connections,
    summarize,
    wrk_percentile_us,
)
from dynastore.bench.wrk_tools import Generator, redis_key

WRK_OUTPUT = """Running 10s test @ http://127.0.0.1:8098
  1 threads and 50 connections
  Latency Distribution
     50%    6.10ms
WRK_JSON {"requests":1000,"duration_us":2000000,"bytes":5,"errors":{"connect":0,"read":1,"write":0,"status":3,\
"timeout":0},"latency_us":{"p50":6100,"p90":9000,"p99":12000,"p99.9":15000,"mean":6500.0,"max":20000},\
"end_us":5,"pending_start_us":[]}
Requests/sec:    500.00
"""

REDIS_OUTPUT = """====== GET ======
  20000 requests completed in 0.22 seconds
  50 parallel clients

Latency by percentile distribution:
0.000% <= 0.071 milliseconds (cumulative count 1)
50.000% <= 0.255 milliseconds (cumulative count 10040)
96.875% <= 0.607 milliseconds (cumulative count 19383)
99.219% <= 1.151 milliseconds (cumulative count 19844)
99.902% <= 2.415 milliseconds (cumulative count 19981)
100.000% <= 2.751 milliseconds (cumulative count 20000)

Cumulative distribution of latencies:
99.950% <= 9.103 milliseconds (cumulative count 5)
100.000% <= 3.103 milliseconds (cumulative count 20000)

Summary:
  throughput summary: 92592.59 requests per second
"""


def test_wrk_json_line_is_found_among_wrk_output_and_parsed() -> None:
    """The WRK_JSON line is picked out of wrk's text; counts and percentiles come through as numbers."""
    doc = parse_wrk_json(WRK_OUTPUT)
    assert doc["requests"] == 1000 and doc["errors"]["status"] == 3 and doc["errors"]["read"] == 1
    assert doc["latency_us"]["p99.9"] == 15000


@pytest.mark.parametrize(
    "text",
    [
        "Running 10s test\nRequests/sec: 1\n",
        "WRK_JSON {not json\n",
        'WRK_JSON {"requests":1,"duration_us":1,"errors":{}}\n',
        'WRK_JSON {"requests":-1,"duration_us":1,"errors":{},"latency_us":{}}\n',
    ],
)
def test_wrk_output_without_a_whole_json_line_is_a_parse_error(text: str) -> None:
    """No line, a broken line, a missing field or a negative count is an error, not a zero result."""
    with pytest.raises(ParseError):
        parse_wrk_json(text)


def test_redis_benchmark_percentiles_are_the_first_steps_at_or_above_them() -> None:
    """p50, p99 and p99.9 come from the percentile distribution only (not the cumulative one)."""
    parsed = parse_redis_benchmark(REDIS_OUTPUT)
    assert parsed["ops_per_s"] == pytest.approx(92592.59)
    assert parsed["latency_ms"] == {"p50": 0.255, "p99": 1.151, "p99.9": 2.415}


def test_redis_benchmark_output_without_a_summary_is_a_parse_error() -> None:
    """A run that printed no throughput (it failed to connect) is an error."""
    with pytest.raises(ParseError):
        parse_redis_benchmark(REDIS_OUTPUT.replace("throughput summary", "nothing"))


def test_redis_keys_are_the_ones_redis_benchmark_draws() -> None:
    """`key:__rand_int__` with -r is the number in 12 digits: the pre-load writes exactly those keys."""
    assert redis_key(42) == "key:000000000042"


def test_proc_stat_cpu_is_counted_after_the_command_name_even_with_spaces_and_parens() -> None:
    """utime and stime are fields 14 and 15, counted from after the last ')' of the command name."""
    fields = ["S"] + [str(i) for i in range(4, 14)] + ["700", "55"] + ["0"] * 30
    text = "1234 (a (weird) name) " + " ".join(fields)
    assert parse_proc_stat(text) == 755
    with pytest.raises(ParseError):
        parse_proc_stat("1234 (short) S 1 2")


def test_a_load_generators_cpu_is_read_after_it_exits_and_before_it_is_reaped(tmp_path: Path) -> None:
    """A child that burns 0.2 s of CPU and exits is measured at 0.2 s or more (a reaped child would be gone)."""
    burn = "import time\nwhile time.process_time() < 0.2:\n    pass\n"
    generator = Generator([sys.executable, "-c", burn], tmp_path / "out", timeout_s=30)
    generator.start()
    _, cpu_s = generator.finish()
    assert 0.19 <= cpu_s < 5.0
    assert generator.proc is not None and generator.proc.returncode == 0


def test_a_failing_load_generator_is_an_error_with_its_output(tmp_path: Path) -> None:
    """A generator that exits non-zero raises with what it printed."""
    from dynastore.bench.wrk_tools import BenchError

    generator = Generator([sys.executable, "-c", "print('no such host'); raise SystemExit(3)"], tmp_path / "o", 30)
    generator.start()
    with pytest.raises(BenchError, match="no such host"):
        generator.finish()


def test_this_process_cpu_from_proc_parses() -> None:
    """The real /proc/self/stat parses to a non-negative tick count."""
    with open(f"/proc/{os.getpid()}/stat") as stat:
        assert parse_proc_stat(stat.read()) >= 0


# --- per-second rows ----------------------------------------------------------------------------------------


def test_log_lines_are_three_integers_in_range() -> None:
    """A good line parses; a short, non-numeric or out-of-range one is an error."""
    assert parse_log_line("1000 250 204") == (1000, 250, 204)
    for bad in ("1 2", "a b c", "1 -5 200", "1 2 42"):
        with pytest.raises(ParseError):
            parse_log_line(bad)


def test_requests_are_counted_in_the_second_they_completed_in() -> None:
    """ok, errors (non-2xx) and timeouts (slower than the limit) land in their completion second; records
    before the start or after the last second are dropped."""
    start = 10_000_000
    records = [
        (start + 100, 1_000, 204),
        (start + 999_999, 2_000, 200),
        (start + 1_000_000, 3_000, 503),
        (start + 1_500_000, 2_500_000, 204),  # answered, but after the 2 s limit
        (start - 1, 1_000, 204),
        (start + 3_000_000, 1_000, 204),
    ]
    rows = per_second(records, start_us=start, seconds=3, timeout_us=2_000_000)
    assert [(r.ok, r.errors, r.timeouts) for r in rows] == [(2, 0, 0), (0, 1, 1), (0, 0, 0)]
    assert rows[1].max_ms == 2500.0 and rows[2].p99_9_ms is None


def test_a_request_unanswered_at_the_end_is_a_timeout_only_when_it_waited_past_the_limit() -> None:
    """Pending requests older than the limit at wrk's end count as timeouts in the last row."""
    start, end = 0, 3_000_000
    rows = per_second(
        [], start_us=start, seconds=3, timeout_us=1_000_000, pending_start_us=[100, 2_500_000], end_us=end
    )
    assert [r.timeouts for r in rows] == [0, 0, 1]


def test_p99_9_of_a_second_is_the_upper_edge_of_the_bucket_holding_the_rank() -> None:
    """999 fast answers and 1 slow one: p99.9 is the fast bucket's edge; a second slow one moves it up."""
    fast = [(i, 1_000, 200) for i in range(999)]
    rows = per_second([*fast, (1000, 500_000, 200)], start_us=0, seconds=1, timeout_us=2_000_000)
    assert rows[0].p99_9_ms is not None and 1.0 <= rows[0].p99_9_ms <= 1.02
    rows = per_second([*fast, (1000, 500_000, 200), (1001, 500_000, 200)], start_us=0, seconds=1, timeout_us=10**7)
    assert rows[0].p99_9_ms is not None and 500.0 <= rows[0].p99_9_ms <= 505.1


def test_percentiles_of_an_empty_histogram_are_none() -> None:
    """No answers in a second is no latency, not zero latency."""
    assert percentile_ms({}, 99.9) is None
    assert math.isclose(percentile_ms({0: 1}, 50) or 0.0, math.exp(0.01) / 1000)


def test_a_phase_summary_takes_the_minimum_rate_and_the_worst_tail() -> None:
    """During a fault: mean and min of ok per second, summed errors and timeouts, the largest p99.9."""
    rows = [
        Second(0, 100, 0, 0, 5.0, 6.0),
        Second(1, 0, 2, 50, None, None),
        Second(2, 80, 1, 0, 4000.0, 4000.0),
        Second(3, 100, 0, 0, 5.0, 6.0),
    ]
    during = summarize(rows, 1, 3)
    assert (during.seconds, during.ok_per_s_mean, during.ok_per_s_min) == (2, 40.0, 0)
    assert (during.errors, during.timeouts, during.p99_9_ms_max) == (3, 50, 4000.0)
    assert summarize(rows, 9, 10).seconds == 0


# --- reports ------------------------------------------------------------------------------------------------


def _run(target: str, op: str, ops: float, p99: float) -> dict[str, Any]:
    return {
        "target": target,
        "op": op,
        "requests": int(ops * 10),
        "ops_per_s": ops,
        "latency_ms": {"p50": p99 / 3, "p99": p99, "p99.9": p99 * 2},
        "errors_total": 0,
        "server_cpu": [{"name": "node0", "pid": 1, "cpu_s": 5.0}, {"name": "node1", "pid": 2, "cpu_s": 1.0}],
        "generator": "wrk",
        "generator_cpu_s": 0.5,
        "wall_s": 10.0,
    }


def test_ratios_divide_rates_and_tails_of_the_same_operation() -> None:
    """dynastore/etcd: ops/s ratio above 1 is faster; p99 ratio below 1 is a lower tail."""
    runs = [_run("dynastore", "get", 2000, 10), _run("etcd", "get", 1000, 20), _run("dynastore", "put", 500, 40)]
    got = ratios(runs, "dynastore", "etcd")
    assert got["get_ops"] == 2.0 and got["get_p99"] == 0.5
    assert got["put_ops"] is None and got["put_p99"] is None


def test_headline_markdown_lists_every_run_with_its_cpu_and_the_notes() -> None:
    """One row per target and operation with ops/s, percentiles, server CPU per op; the notes follow."""
    runs = [_run("dynastore", "get", 2000, 10), _run("etcd", "get", 1000, 20), _run("redis", "get", 9000, 1)]
    runs[2]["errors_total"] = None
    doc = {
        "started": "2026-12-03 12:00 UTC",
        "machine": {"cpu": "CPU", "vcpus": 2, "effective_cores": 2.0},
        "settings": {"value_bytes": 1024, "keys": 10000, "threads": 1, "connections": 50, "duration_s": 10},
        "runs": runs,
        "ratios": {"dynastore / etcd": ratios(runs, "dynastore", "etcd")},
        "notes": ["etcd is driven through its JSON gateway"],
    }
    doc["settings"]["warmup_s"] = 2
    text = headline_markdown(doc)
    assert "| dynastore | one node | GET | 2,000 | 3.33 | 10.0 | 20.0 | 0 | 6.00 | 0.50 | 300 | 32 % |" in text
    assert "| dynastore / etcd | 2.00x | - | 0.50x | - |" in text
    assert "| redis | one node | GET | 9,000 | 0.33 | 1.00 | 2.00 | - |" in text
    assert "node0 5.00 s, node1 1.00 s; wrk 0.50 s" in text and "JSON gateway" in text
    assert "Clients on:" not in text


def _wrk_doc(
    requests: int, duration_s: float, p99_us: int, mean_us: float, max_us: int, **errors: int
) -> dict[str, Any]:
    return {
        "requests": requests,
        "duration_us": int(duration_s * 1e6),
        "errors": {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0, **errors},
        "latency_us": {
            "p50": p99_us // 4,
            "p90": p99_us // 2,
            "p99": p99_us,
            "p99.9": p99_us * 2,
            "mean": mean_us,
            "max": max_us,
        },
    }


def test_spread_runs_sum_rates_and_errors_and_take_the_worst_percentile_as_an_upper_bound() -> None:
    """Three wrk side by side: ops/s is the sum of each one's requests over its own duration, errors are
    summed by kind, each percentile is the largest, the mean is weighted by requests, max the largest."""
    docs = [
        _wrk_doc(1000, 10.0, 40_000, 10_000.0, 90_000, status=2),
        _wrk_doc(3000, 10.0, 20_000, 5_000.0, 60_000, read=1),
        _wrk_doc(2000, 10.5, 30_000, 8_000.0, 95_000, status=1),
    ]
    merged = merge_wrk_docs(docs)
    assert merged["requests"] == 6000
    assert math.isclose(merged["ops_per_s"], 100 + 300 + 2000 / 10.5)
    assert merged["errors"] == {"connect": 0, "read": 1, "write": 0, "status": 3, "timeout": 0}
    lat = merged["latency_us"]
    assert (lat["p50"], lat["p90"], lat["p99"], lat["p99.9"], lat["max"]) == (10_000, 20_000, 40_000, 80_000, 95_000)
    assert math.isclose(lat["mean"], (1000 * 10_000 + 3000 * 5_000 + 2000 * 8_000) / 6000)
    assert merged["duration_us"] == 10_500_000


def _wrk_percentile_of_samples(samples: list[int], p: float) -> int:
    rank = math.floor(p / 100 * len(samples) + 0.5 + 0.5)
    return sorted(samples)[max(rank, 1) - 1]


def test_histograms_listed_by_every_wrk_merge_exactly() -> None:
    """With every wrk's histogram, the merged percentiles, mean and max are those of all samples
    together (wrk's percentile rule), not the worst wrk's."""
    import random

    rng = random.Random(7)
    groups = [[rng.randint(1, 50_000) for _ in range(n)] for n in (700, 1500, 40)]
    docs = []
    for samples in groups:
        histogram: dict[int, int] = {}
        for us in samples:
            histogram[us] = histogram.get(us, 0) + 1
        doc = _wrk_doc(len(samples), 10.0, _wrk_percentile_of_samples(samples, 99), 0.0, max(samples))
        docs.append({**doc, "histogram_us": histogram, "histogram_cpu_s": 0.01})
    union = [us for g in groups for us in g]
    merged = merge_wrk_docs(docs)
    assert merged["latency_merge"] == "exact"
    for name, p in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9)):
        assert merged["latency_us"][name] == _wrk_percentile_of_samples(union, p), name
    assert math.isclose(merged["latency_us"]["mean"], sum(union) / len(union))
    assert merged["latency_us"]["max"] == max(union) and merged["requests"] == len(union)
    # Without one wrk's histogram the merge falls back to the worst wrk's percentiles, and says so.
    docs[2] = {**docs[2], "histogram_us": None}
    fallback = merge_wrk_docs(docs)
    assert fallback["latency_merge"] == "worst"
    assert fallback["latency_us"]["p99"] == max(d["latency_us"]["p99"] for d in docs)


def test_wrk_hist_lines_parse_and_bad_ones_are_errors() -> None:
    """`WRK_HIST <cpu_us> us:count ...` is a histogram and the listing's CPU; `skipped <cpu_us>` is none."""
    assert parse_wrk_hist("WRK_HIST 1500 10:2 12:1") == ({10: 2, 12: 1}, 0.0015)
    assert parse_wrk_hist("WRK_HIST skipped 1000000") == (None, 1.0)
    for bad in (
        "WRK_HIST skipped",
        "WRK_HIST skipped 5 1:1",
        "WRK_HIST skipped -1",
        "WRK_HIST ",
        "WRK_HIST 5",
        "WRK_HIST 5 10:0",
        "WRK_HIST 5 10:1 10:2",
        "WRK_HIST x 1:1",
        "WRK_HIST 5 1-1",
    ):
        with pytest.raises(ParseError):
            parse_wrk_hist(bad)
    doc = parse_wrk_json(WRK_OUTPUT + "WRK_HIST 20 6100:3\n")
    assert doc["histogram_us"] == {6100: 3} and doc["histogram_cpu_s"] == 0.00002
    assert parse_wrk_json(WRK_OUTPUT)["histogram_us"] is None


def test_the_worst_percentile_bounds_the_percentile_of_all_requests_together() -> None:
    """The claim merge_wrk_docs makes, checked on samples: the p99 of the union of three samples is at
    most the largest of their p99s (wrk's percentile: the first value whose cumulative count reaches
    round(p/100 * count + 0.5))."""
    import random

    def wrk_percentile(samples: list[int], p: float) -> int:
        rank = math.floor(p / 100 * len(samples) + 0.5 + 0.5)
        return sorted(samples)[max(rank, 1) - 1]

    rng = random.Random(20)
    for _ in range(200):
        groups = [
            [int(rng.expovariate(1 / rng.choice((5, 50, 500)))) for _ in range(rng.randint(1, 300))] for _ in range(3)
        ]
        union = [x for g in groups for x in g]
        for p in (50.0, 90.0, 99.0, 99.9):
            assert wrk_percentile(union, p) <= max(wrk_percentile(g, p) for g in groups)


def test_a_wrk_without_answers_does_not_lower_the_others_percentiles_or_the_mean() -> None:
    """A wrk that got no answer reports zero latencies: they do not count in the merge."""
    merged = merge_wrk_docs([_wrk_doc(0, 10.0, 0, 0.0, 0, connect=5), _wrk_doc(500, 10.0, 30_000, 9_000.0, 50_000)])
    assert merged["latency_us"]["p99"] == 30_000 and merged["latency_us"]["mean"] == 9_000.0
    assert merged["errors"]["connect"] == 5 and merged["ops_per_s"] == 50.0
    with pytest.raises(ValueError):
        merge_wrk_docs([])


def test_connections_are_split_evenly_over_the_nodes_keeping_the_total() -> None:
    """50 over 3 nodes is 17/17/16; fewer connections than nodes is an error, not a node without load."""
    assert split_connections(50, 3) == [17, 17, 16]
    assert split_connections(50, 1) == [50] and split_connections(3, 3) == [1, 1, 1]
    assert sum(split_connections(1000, 7)) == 1000
    with pytest.raises(ValueError):
        split_connections(2, 3)
    with pytest.raises(ValueError):
        split_connections(5, 0)


def test_ratios_compare_runs_with_the_clients_placed_alike() -> None:
    """dynastore/etcd is computed per placement; a run without a placement was on one node."""
    spread_dyn = {**_run("dynastore", "get", 3000, 10), "placement": "spread"}
    spread_etcd = {**_run("etcd", "get", 1500, 40), "placement": "spread"}
    runs = [_run("dynastore", "get", 2000, 10), _run("etcd", "get", 1000, 20), spread_dyn, spread_etcd]
    assert ratios(runs, "dynastore", "etcd")["get_ops"] == 2.0
    spread = ratios(runs, "dynastore", "etcd", numerator_placement="spread", denominator_placement="spread")
    assert spread["get_ops"] == 2.0 and spread["get_p99"] == 0.25
    cross = ratios(runs, "dynastore", "etcd", numerator_placement="spread")
    assert cross["get_ops"] == 3.0


def test_headline_markdown_shows_spread_rows_with_each_wrk_and_says_how_percentiles_merge() -> None:
    """A spread run is its own row ("spread"), its wrk processes listed with their share of the load."""
    run = {**_run("dynastore", "put", 900, 30), "placement": "spread"}
    run["generators"] = [
        {"node": f"node{i}", "connections": c, "ops_per_s": 300.0, "latency_ms": {"p99": 30.0}, "cpu_s": 0.1}
        for i, c in enumerate((17, 17, 16))
    ]
    doc = {
        "started": "now",
        "machine": {"cpu": "CPU", "vcpus": 2, "effective_cores": 2.0},
        "settings": {"value_bytes": 1024, "keys": 10, "threads": 1, "connections": 50, "duration_s": 10, "warmup_s": 0},
        "runs": [_run("dynastore", "put", 500, 40), run],
        "ratios": {},
        "notes": [],
    }
    text = headline_markdown(doc)
    assert "| dynastore | one node | PUT | 500 |" in text and "| dynastore | spread | PUT | 900 |" in text
    assert "Clients on:" in text and "histograms summed (exact" in text and "upper bound" not in text
    run["latency_merge"] = "worst"
    text = headline_markdown(doc)
    assert "Except dynastore PUT: a wrk listed no histogram" in text and "upper bound" in text
    assert "- dynastore PUT (spread): node0 5.00 s, node1 1.00 s; 3 x wrk 0.50 s (node0: 17 connections" in text
    assert "node2: 16 connections, 300 ops/s, p99 30.0 ms, 0.10 s)" in text


def test_faults_markdown_has_a_summary_and_a_per_second_table_side_by_side() -> None:
    """Summary per fault and system; per-second rows with both systems' ok, err+to and p99.9."""
    settings = {"ops": ["put", "get"], "value_bytes": 1024, "keys": 100, "connections": 50, "before_s": 1, "fault_s": 1}
    settings.update({"after_s": 1, "timeout_ms": 2000})
    seconds = [
        {"second": 0, "ok": 100, "errors": 0, "timeouts": 0, "p99_9_ms": 5.0},
        {"second": 1, "ok": 0, "errors": 0, "timeouts": 0, "p99_9_ms": None},
        {"second": 2, "ok": 50, "errors": 1, "timeouts": 49, "p99_9_ms": 2500.0},
    ]

    def phase(ok: float, errors: int, timeouts: int, tail: float | None) -> dict[str, Any]:
        return {
            "ok_per_s_mean": ok,
            "ok_per_s_min": int(ok),
            "errors": errors,
            "timeouts": timeouts,
            "p99_9_ms_max": tail,
        }

    etcd = {
        "victim": "etcd1, the leader",
        "seconds": seconds,
        "summary": {"before": phase(100, 0, 0, 5.0), "during": phase(0, 0, 0, None), "after": phase(50, 1, 49, 2500.0)},
        "wrk_errors": {"connect": 0, "read": 2, "write": 0, "status": 1, "timeout": 0},
        "statuses": {"200": 150, "500": 1},
    }
    doc = {
        "started": "now",
        "settings": settings,
        "scenarios": [
            {
                "fault": "sigstop",
                "op": "put",
                "description": "stopped",
                "systems": {"etcd": etcd, "dynastore": {"error": "boom"}},
            }
        ],
        "notes": ["shared machine"],
    }
    text = faults_markdown(doc)
    assert "| sigstop | PUT | etcd | 100 | 0 | 0 | 1 | 49 | 5.00 | 2,500 | 2 |" in text
    assert "| sigstop | PUT | dynastore | boom |" in text
    assert "## sigstop, PUT: stopped" in text and "PUT and GET of 1024 B values" in text
    assert "- etcd: etcd1, the leader; answers by status: 150 x 200, 1 x 500" in text
    assert "| 1 | fault | 0 | 0 | - |" in text and "| 2 | after | 50 | 50 | 2,500 |" in text


# --- the wrk script ----------------------------------------------------------------------------------------


@pytest.mark.skipif(subprocess.run(["which", "wrk"], capture_output=True).returncode != 0, reason="wrk not installed")
def test_kv_lua_sends_etcd_puts_with_base64_keys_from_the_key_space_and_logs_each_answer(tmp_path: Path) -> None:
    """Against a local recording server, kv.lua's etcd PUTs carry base64 keys k0..k<KEYS-1> and the value,
    and with a log directory each answer is one parsable line per request."""
    import base64
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from dynastore.bench.wrk_tools import wrk_command

    bodies: list[bytes] = []

    class Recorder(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        log_dir = tmp_path / "logs"
        log_dir.mkdir()
        command = wrk_command(
            url, "etcd", "put", duration_s=1, threads=2, connections=2, keys=5, value_bytes=64, log_dir=log_dir
        )
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    finally:
        server.shutdown()
        server.server_close()
    doc = parse_wrk_json(done.stdout)
    assert bodies and doc["requests"] >= 1
    # The listed histogram is the one wrk's own percentiles come from (a value, or at a rank's rounding
    # edge its neighbour among the listed values).
    histogram = doc["histogram_us"]
    assert histogram and sum(histogram.values()) >= doc["requests"]
    values = sorted(histogram)
    for name, p in (("p50", 50.0), ("p99", 99.0)):
        at = values.index(wrk_percentile_us(histogram, p))
        assert doc["latency_us"][name] in values[max(at - 1, 0) : at + 2], name
    assert doc["latency_us"]["max"] == values[-1]
    keys = set()
    for body in bodies:
        parsed = json.loads(body)
        keys.add(base64.b64decode(parsed["key"]).decode())
        assert len(base64.b64decode(parsed["value"])) == 64
    assert keys <= {f"k{i}" for i in range(5)} and len(keys) >= 2
    lines = [parse_log_line(line) for p in sorted(log_dir.glob("thread-*.log")) for line in p.read_text().splitlines()]
    assert len(lines) >= doc["requests"] and all(status == 200 and latency >= 0 for _, latency, status in lines)


# --- the command line --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--spread", "--connections", "2"], "--connections 3 at least"),
        (["--placement", "one,spread", "--connections", "1"], "--connections 3 at least"),
        (["--placement", "everywhere"], "placements are one, spread or one,spread"),
        (["--placement", "one,one"], "placements are one, spread or one,spread"),
        (["--placement", ""], "placements are one, spread or one,spread"),
    ],
)
def test_bad_placements_are_refused_before_anything_starts(
    argv: list[str], message: str, tmp_path: Path, capsys: Any
) -> None:
    """An unknown or repeated placement, or a spread run with fewer connections than nodes, is a usage
    error (exit 2, one line naming the problem) and writes no report."""
    from dynastore.bench import wrkbench

    with pytest.raises(SystemExit) as exit_info:
        wrkbench.main([*argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
