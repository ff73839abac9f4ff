"""`dynastore bench cost` end to end, briefly: what it measures and reports (never how fast anything was),
that every request it sends is answered, and that bad options are refused before anything starts."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import aiohttp
import pytest
from click.testing import CliRunner

from dynastore.api.server import HttpServer, Request, Response
from dynastore.bench.cost import Row, _measure_kind, format_table, main, median_rows
from dynastore.cli import main as cli_main


def test_a_short_run_reports_every_kind_per_node_as_table_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cost.json"
    assert main(["--rate", "40", "--seconds", "1", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert (doc["rate"], doc["seconds"], doc["runs"]) == (40, 1, 1)
    assert [(r["kind"], r["nodes"], len(r["per_node_us"])) for r in doc["rows"]] == [
        ("ping", 1, 1),
        ("read", 1, 1),
        ("ping", 3, 3),
        ("read", 3, 3),
        ("insert", 3, 3),
        ("increment", 3, 3),
    ]
    # /proc counts CPU in ticks of 10 ms, so a second at 40 requests/s may see none on a node: the
    # figures only have to be there and not negative, and some CPU seen somewhere.
    assert all(us >= 0 for row in doc["rows"] for us in row["per_node_us"])
    assert sum(us for row in doc["rows"] for us in row["per_node_us"]) > 0
    table = capsys.readouterr().out
    assert "CPU microseconds per request at 40 requests/s, all sent to node0" in table
    assert len([line for line in table.splitlines() if line.startswith(("ping", "read", "insert", "increment"))]) == 6


def test_medians_are_taken_cell_by_cell_and_the_table_pads_one_node_rows() -> None:
    runs = [
        [Row("read", 3, (10.0, 1.0, 5.0)), Row("ping", 1, (7.0,))],
        [Row("read", 3, (30.0, 2.0, 1.0)), Row("ping", 1, (9.0,))],
        [Row("read", 3, (20.0, 9.0, 3.0)), Row("ping", 1, (8.0,))],
    ]
    assert median_rows(runs) == [Row("read", 3, (20.0, 2.0, 3.0)), Row("ping", 1, (8.0,))]
    lines = format_table(median_rows(runs), 100).splitlines()
    assert lines[2].split() == ["read", "3", "nodes", "20", "2", "3", "25"]
    assert lines[3].split() == ["ping", "1", "node", "8", "-", "-", "8"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "0"], "--rate must be from 1 to 100000"),
        (["--seconds", "0.1"], "--seconds must be from 0.5 to 600"),
        (["--runs", "0"], "--runs must be from 1 to 20"),
    ],
)
def test_bad_options_are_refused_before_any_cluster_starts(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli_main, ["bench", "cost", *args])
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize("failure", ["status", "refused"])
def test_a_run_with_failed_requests_fails_instead_of_reporting_a_figure(failure: str) -> None:
    """Every third request gets a 500, or every connection is refused: the run raises, naming the
    failures, rather than dividing CPU by requests that were never served."""

    async def scenario() -> None:
        count = 0

        async def handler(request: Request) -> Response:
            nonlocal count
            count += 1
            return Response(status=500, text="no") if count % 3 == 0 else Response(text="OK")

        server = HttpServer(handler, body_bytes_max=1024, idle_timeout_s=30, connections_max=16)
        await server.start("127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.port}"
        if failure == "refused":
            await server.stop(grace_s=0.1)
        try:
            async with aiohttp.ClientSession() as session:
                with pytest.raises(RuntimeError, match="ping requests failed"):
                    await _measure_kind(session, url, "ping", 100, 0.5, (os.getpid(),), warmup_s=0.1)
        finally:
            await server.stop(grace_s=0.5)

    asyncio.run(asyncio.wait_for(scenario(), 30))
