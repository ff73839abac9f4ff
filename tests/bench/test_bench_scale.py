"""`dynastore bench scale` without a cluster: wrk's output parsed, the load script writing every key once
against a stand-in server, the growth exponents and the report, and bad options refused at once."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from dynastore.bench.scale import (
    LOAD_LUA,
    RANDOM_LUA,
    Restart,
    SizeResult,
    WrkResult,
    _ready,
    disk_bytes,
    format_markdown,
    growth_exponent,
    parse_sizes,
    parse_wrk,
    result_json,
    rss_bytes,
    run_wrk,
)
from dynastore.cli import main as cli_main
from dynastore.localcluster import free_port

WRK_OUTPUT = """Running 10s test @ http://127.0.0.1:8098
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    17.21ms    5.10ms  98.02ms   80.12%
    Req/Sec     2.93k   301.22     3.41k    71.00%
  Latency Distribution
     50%   16.52ms
     75%   19.01ms
     90%   22.48ms
     99%    1.02s
  29187 requests in 10.01s, 3.23MB read
  Socket errors: connect 0, read 2, write 0, timeout 7
  Non-2xx or 3xx responses: 12
Requests/sec:   2915.88
Transfer/sec:    330.71KB
scale-ok=29175 scale-failed=12
"""


def test_wrk_output_is_read_into_rate_percentiles_errors_and_the_script_counts() -> None:
    result = parse_wrk(WRK_OUTPUT)
    assert result.requests == 29187
    assert result.duration_s == pytest.approx(10.01)
    assert result.requests_per_s == pytest.approx(2915.88)
    assert result.p50_ms == pytest.approx(16.52)
    assert result.p99_ms == pytest.approx(1020.0)
    assert result.errors == {"connect": 0, "read": 2, "write": 0, "timeout": 7}
    assert result.non_2xx == 12
    assert result.script == {"ok": 29175, "failed": 12}


def test_wrk_output_without_errors_or_script_lines_has_zero_counts() -> None:
    text = "\n".join(
        line for line in WRK_OUTPUT.splitlines() if not line.strip().startswith(("Socket", "Non-2xx", "scale-"))
    )
    result = parse_wrk(text)
    assert result.errors == {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    assert (result.non_2xx, result.script) == (0, {})


@pytest.mark.parametrize("missing", ["Requests/sec", "99%", "requests in"])
def test_wrk_output_missing_a_figure_is_an_error_not_a_zero(missing: str) -> None:
    text = "\n".join(line for line in WRK_OUTPUT.splitlines() if missing not in line)
    with pytest.raises(ValueError, match="wrk printed no"):
        parse_wrk(text)


class _QuietServer(ThreadingHTTPServer):
    """A stand-in server that takes a client resetting its connection (wrk stopped by SIGINT) quietly."""

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class _Recorder(BaseHTTPRequestHandler):
    """Answers PUT with 204 (or 503 for keys ending in 7) and GET /ping with 200; remembers PUT paths."""

    puts: list[str]
    lock = threading.Lock()

    def do_PUT(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            self.puts.append(self.path)
        self.send_response(503 if self.path.split("?")[0].endswith("7") else 204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[str]]]:
    puts: list[str] = []
    handler = type("Handler", (_Recorder,), {"puts": puts, "protocol_version": "HTTP/1.1"})
    server = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", puts
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


needs_wrk = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")


@needs_wrk
@pytest.mark.parametrize("threads", [1, 2])
def test_the_load_script_puts_every_key_of_its_range_once_counts_failures_and_stops(
    tmp_path: Path, recorder: tuple[str, list[str]], threads: int
) -> None:
    """Keys 5..64 with 8 connections: each key PUT exactly once (the first key too, which wrk's check of
    the script once swallowed), 503s counted as failed, and wrk stops well before its 20 s bound."""
    url, puts = recorder
    script = tmp_path / "load.lua"
    script.write_text(LOAD_LUA)
    result = run_wrk(url, script, ["5", "65", str(threads)], connections=8, duration_s=20, threads=threads)
    paths = sorted(p.split("?")[0] for p in puts)
    assert paths == [f"/buckets/scale/keys/k{i:09d}" for i in range(5, 65)]
    assert all(p.endswith("?w=2") for p in puts)
    failed = sum(1 for i in range(5, 65) if i % 10 == 7)
    assert result.script == {"ok": 60 - failed, "failed": failed}
    assert result.duration_s < 10


@needs_wrk
def test_the_random_script_reads_keys_of_the_loaded_space_only(tmp_path: Path, recorder: tuple[str, list[str]]) -> None:
    url, puts = recorder
    script = tmp_path / "random.lua"
    script.write_text(RANDOM_LUA)
    result = run_wrk(url, script, ["3", "PUT"], connections=2, duration_s=1)
    assert result.requests > 0
    assert {p.split("?")[0] for p in puts} <= {f"/buckets/scale/keys/k{i:09d}" for i in range(3)}
    assert len(puts) >= 3


def test_growth_exponent_is_one_for_linear_zero_for_flat_and_none_when_unknown() -> None:
    assert growth_exponent(1_000, 10.0, 5_000, 50.0) == pytest.approx(1.0)
    assert growth_exponent(1_000, 10.0, 5_000, 10.0) == pytest.approx(0.0)
    assert growth_exponent(1_000, 1.0, 10_000, 100.0) == pytest.approx(2.0)
    assert growth_exponent(1_000, 0.0, 5_000, 3.0) is None
    assert growth_exponent(1_000, 2.0, 1_000, 3.0) is None


def _result(keys: int, scale: float) -> SizeResult:
    wrk = WrkResult(1000, 10.0, 100.0, 5.0, 20.0 * scale, {"connect": 0, "read": 0, "write": 0, "timeout": 0}, 0)
    return SizeResult(
        keys=keys,
        load_keys=keys,
        load_s=keys / 1000,
        load_keys_per_s=1000.0,
        load_failed=0,
        keys_stored=[keys] * 3,
        converged_s=1.0,
        get=wrk,
        put=wrk,
        rss_bytes=[100 * 2**20 + keys * 10] * 3,
        rss_anon_bytes=[90 * 2**20] * 3,
        disk_bytes=[keys * 2000] * 3,
        clean=Restart(1.0, 2.0 * scale, 0.5),
        killed=Restart(1.5, 10.0 * scale, 0.0, 0.5, {"node1": "1 of 3 owners believed up"}),
        rss_after_rebuild_bytes=[200 * 2**20] * 3,
    )


def test_the_report_has_a_row_per_figure_a_column_per_size_and_the_growth_between_them() -> None:
    results = [_result(1_000, 1.0), _result(10_000, 10.0)]
    meta = {"connections": 50, "load_connections": 50, "duration_s": 10.0}
    text = format_markdown(results, meta)
    assert "| | unit | 1,000 keys | 10,000 keys | growth 1,000→10,000 |" in text
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["disk per stored key"].endswith("| 2,000 | 2,000 | +0.00 |")
    assert rows["kill -9 start: full AAE rebuild from the data"].endswith("| 10.0 | 100 | +1.00 |")
    assert rows["GET p99"].endswith("| 20.0 | 200 | +1.00 |")
    assert "- 10,000 keys, kill -9 start: node1: 1 of 3 owners believed up" in text
    assert "clean start: node" not in text
    doc = result_json(results, meta)
    assert [row["keys"] for row in doc["sizes"]] == [1_000, 10_000]
    assert doc["sizes"][0]["disk_bytes_per_key"] == 2000.0
    growth = {g["figure"]: g["exponent"] for g in doc["growth"]}
    assert growth["load rate"] == pytest.approx(0.0)
    assert growth["clean start: AAE trees built from the index"] == pytest.approx(1.0)


def test_disk_bytes_count_allocated_blocks_and_rss_is_read_from_proc(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"x" * 100_000)
    with open(tmp_path / "sparse", "wb") as f:
        f.truncate(50_000_000)
    assert 100_000 <= disk_bytes(tmp_path) < 1_000_000
    assert 1_000_000 < rss_bytes(os.getpid()) < 64 * 2**30


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1000,x", "whole numbers"),
        ("", "at least one size"),
        ("0", "every size must be from 1"),
        ("5000,1000", "must increase"),
        ("1000,1000", "must increase"),
    ],
)
def test_bad_sizes_are_refused(text: str, message: str) -> None:
    with pytest.raises(Exception, match=message):
        parse_sizes(text)


def test_sizes_may_use_underscores() -> None:
    assert parse_sizes("1_000_000,5000000") == [1_000_000, 5_000_000]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sizes", "10,5"], "must increase"),
        (["--duration", "0"], "--duration must be from 1 to 600"),
        (["--connections", "0"], "--connections must be from 1 to 1000"),
        (["--sizes", "50000000"], "GB free"),
    ],
)
def test_bad_options_are_refused_before_any_cluster_starts(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli_main, ["bench", "scale", "--data-dir", str(tmp_path), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert list(tmp_path.iterdir()) == []


class _NotReady(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"ready": False, "reason": "1 of 3 owners believed up"}).encode()
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_a_node_not_ready_leaves_what_its_ready_said_or_that_it_is_not_listening() -> None:
    server = _QuietServer(("127.0.0.1", 0), _NotReady)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        busy = SimpleNamespace(name="node1", url=f"http://127.0.0.1:{server.server_address[1]}")
        closed = SimpleNamespace(name="node2", url=f"http://127.0.0.1:{free_port()}")
        reasons: dict[str, str] = {}
        assert not _ready(busy, reasons)  # type: ignore[arg-type]
        assert not _ready(closed, reasons)  # type: ignore[arg-type]
        assert reasons == {"node1": "1 of 3 owners believed up", "node2": "not listening yet"}
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
