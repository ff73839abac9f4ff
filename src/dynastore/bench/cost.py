"""Where a request's CPU goes: the CPU time each node process spends per request, at a fixed rate, for
four kinds of request, every one sent to the first node so that the coordinator's share and the
replicas' show apart:

    dynastore bench cost [--rate 800] [--seconds 10] [--runs 1] [--security] [--json FILE]

- ping, 1 node: GET /ping — the HTTP server and the event loop, nothing else (the floor of any request);
- read, 1 node: GET of a 1 KB object on a one-node cluster at n_val=1 — a read with no replication;
- ping and read, 3 nodes: the same on a 3-node cluster at n_val=3, r=2 (the first node coordinates,
  the other two answer it as replicas);
- insert, 3 nodes: a PUT of a new 1 KB object at w=2, durable (each replica syncs it);
- increment, 3 nodes: a counter increment (a data type, in a bucket type whose datatype is counter)
  on one of the loaded keys at w=2, durable: the cost of a data type next to a plain put.

The clients are open-loop (requests start on a fixed schedule, whatever the answers do), so every kind
is measured at the same rate. CPU is user plus system time from /proc (in ticks of 10 ms: a short or
slow run is coarse) over the measured window divided by the requests sent in it; it includes each
node's background work over that window (gossip, heartbeats: a few microseconds per request at the
default rate). The driver is this process and is not counted. With --runs N each figure is the
median of N runs. With --security, every cluster has security on and the driver sends the
credentials of a user granted riak_kv.get and riak_kv.put (the credential cache makes a request's
cost what it would be in production: its first request pays one password check per node).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from dynastore.bench.ycsb_driver import cpu_seconds
from dynastore.client.http import basic_auth
from dynastore.localcluster import LocalCluster, http_json, secret_proof

RECORDS = 200
COUNTER_TYPE = "cost-counters"
VALUE = b"v" * 1000
WARMUP_S = 2.0
# Requests still unanswered when a kind's schedule ends get this long before the run fails.
DRAIN_S = 30.0


@dataclass(frozen=True)
class Row:
    kind: str
    nodes: int
    per_node_us: tuple[float, ...]

    @property
    def total_us(self) -> float:
        return sum(self.per_node_us)


async def _measure_kind(
    session: aiohttp.ClientSession,
    url: str,
    kind: str,
    rate: float,
    seconds: float,
    pids: tuple[int, ...],
    *,
    warmup_s: float = WARMUP_S,
) -> tuple[float, ...]:
    failures: list[str] = []

    async def one(i: int) -> None:
        # Reads go round the loaded records; each insert writes a key of its own.
        if kind == "ping":
            request = session.get(url + "/ping")
        elif kind == "read":
            request = session.get(f"{url}/buckets/cost/keys/k{i % RECORDS}")
        elif kind == "increment":
            request = session.post(
                f"{url}/types/{COUNTER_TYPE}/buckets/cost/datatypes/k{i % RECORDS}",
                data=b'{"increment": 1}',
                headers={"Content-Type": "application/json"},
            )
        else:
            request = session.put(
                f"{url}/buckets/cost-insert/keys/k{i}", data=VALUE, headers={"Content-Type": "text/plain"}
            )
        try:
            async with request as resp:
                await resp.read()
                if resp.status >= 300:
                    failures.append(f"HTTP {resp.status}")
        except Exception as exc:
            # Recorded here: a finished task leaves the set below, so nothing else would see it.
            failures.append(repr(exc))

    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    started = loop.time()
    sent = 0
    window: tuple[list[float], int] | None = None
    while (now := loop.time() - started) < warmup_s + seconds:
        if window is None and now >= warmup_s:
            window = (_cpu_each(pids), sent)
        while sent < now * rate:
            task = loop.create_task(one(sent))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.sleep(0.001)
    after = _cpu_each(pids)
    assert window is not None
    if tasks:
        # Each request records its own failure (below); here only the unanswered ones are left to count.
        _, pending = await asyncio.wait(tasks, timeout=DRAIN_S)
        for task in pending:
            task.cancel()
        if pending:
            raise RuntimeError(f"{len(pending)} {kind} requests unanswered {DRAIN_S:.0f} s after the last was sent")
    if failures:
        raise RuntimeError(f"{len(failures)} {kind} requests failed, e.g. {failures[0]}")
    # Every request sent was answered: a failure would leave CPU divided by requests never served.
    before, counted_from = window
    requests = sent - counted_from
    return tuple((b - a) * 1e6 / requests for a, b in zip(before, after, strict=True))


def _cpu_each(pids: tuple[int, ...]) -> list[float]:
    out = []
    for pid in pids:
        seconds = cpu_seconds((pid,))
        if seconds is None:
            raise RuntimeError(f"cannot read the CPU time of node process {pid} (has it exited?)")
        out.append(seconds)
    return out


async def _drive(
    url: str,
    kinds: tuple[str, ...],
    nodes: int,
    rate: float,
    seconds: float,
    pids: tuple[int, ...],
    auth: dict[str, str] | None = None,
) -> list[Row]:
    timeout = aiohttp.ClientTimeout(total=DRAIN_S)
    connector = aiohttp.TCPConnector(limit=256)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=auth) as session:
        for i in range(RECORDS):
            async with session.put(
                f"{url}/buckets/cost/keys/k{i}", data=VALUE, headers={"Content-Type": "text/plain"}
            ) as resp:
                if resp.status >= 300:
                    raise RuntimeError(f"loading the records: HTTP {resp.status}")
            if "increment" in kinds:
                async with session.post(
                    f"{url}/types/{COUNTER_TYPE}/buckets/cost/datatypes/k{i}",
                    data=b'{"increment": 1}',
                    headers={"Content-Type": "application/json"},
                ) as resp:
                    if resp.status >= 300:
                        raise RuntimeError(f"loading the counters: HTTP {resp.status}")
        return [Row(kind, nodes, await _measure_kind(session, url, kind, rate, seconds, pids)) for kind in kinds]


BENCH_USER, BENCH_PASSWORD = "bench", "bench-password"


def _secure(cluster: LocalCluster) -> dict[str, str]:
    """Security on, with a user that may read and write any bucket (set up with the cluster secret)."""
    assert cluster.secret is not None
    url = cluster[0].url

    def operator(target: str, body: bytes = b"") -> None:
        headers = {**secret_proof(url, "POST", target, body, cluster.secret or ""), "Content-Type": "application/json"}
        http_json(url + target, timeout_s=30.0, method="POST", data=body, headers=headers)

    operator(f"/admin/security/users?name={BENCH_USER}", json.dumps({"password": BENCH_PASSWORD}).encode())
    operator(f"/admin/security/grant?permissions=riak_kv.get,riak_kv.put&on=any&user={BENCH_USER}")
    operator("/admin/security/enable")
    cluster.set_secure(True)
    return basic_auth(BENCH_USER, BENCH_PASSWORD)


def _counter_type(cluster: LocalCluster) -> None:
    """A bucket type of counters, created and activated on every node (as an operator, with the
    cluster secret when there is one), before any increment is sent."""
    url = cluster[0].url
    for target, body in (
        (f"/admin/bucket-types/{COUNTER_TYPE}", json.dumps({"props": {"datatype": "counter"}}).encode()),
        (f"/admin/bucket-types/{COUNTER_TYPE}/activate", b""),
    ):
        headers = {"Content-Type": "application/json"}
        if cluster.secret is not None:
            headers.update(secret_proof(url, "POST", target, body, cluster.secret))
        http_json(url + target, timeout_s=30.0, method="POST", data=body, headers=headers)
    deadline = time.monotonic() + 30
    for node in cluster.nodes:
        while not http_json(f"{node.url}/admin/bucket-types/{COUNTER_TYPE}", timeout_s=5.0).get("active"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.name} did not learn of the counter type within 30 s")
            time.sleep(0.1)


def measure(rate: float, seconds: float, root: Path, security: bool = False) -> list[Row]:
    rows: list[Row] = []
    setups: tuple[tuple[int, tuple[str, ...], tuple[str, ...]], ...] = (
        (1, ("n_val=1", "r=1", "w=1"), ("ping", "read")),
        (3, (), ("ping", "read", "insert", "increment")),
    )
    for nodes, overrides, kinds in setups:
        cluster = LocalCluster(root / f"{nodes}-nodes-{time.monotonic_ns()}", nodes, overrides=overrides)
        try:
            cluster.start()
            cluster.wait_ready(60)
            pids = tuple(node.proc.pid for node in cluster.nodes if node.proc is not None)
            if len(pids) != nodes:
                raise RuntimeError("a node of the cluster has no process")
            if "increment" in kinds:
                _counter_type(cluster)
            auth = _secure(cluster) if security else None
            rows += asyncio.run(_drive(cluster[0].url, kinds, nodes, rate, seconds, pids, auth))
        finally:
            cluster.close()
    return rows


def median_rows(runs: list[list[Row]]) -> list[Row]:
    """Cell by cell, the median over runs of the same kinds in the same order."""
    out = []
    for same in zip(*runs, strict=True):
        first = same[0]
        per_node = tuple(statistics.median(row.per_node_us[i] for row in same) for i in range(len(first.per_node_us)))
        out.append(Row(first.kind, first.nodes, per_node))
    return out


def format_table(rows: list[Row], rate: float) -> str:
    lines = [
        f"CPU microseconds per request at {rate:g} requests/s, all sent to node0",
        f"{'request':<10} {'cluster':>8} {'node0':>7} {'node1':>7} {'node2':>7} {'all nodes':>10}",
    ]
    for row in rows:
        cells = [f"{us:7.0f}" for us in row.per_node_us] + ["      -"] * (3 - len(row.per_node_us))
        cluster = f"{row.nodes} node" + ("s" if row.nodes > 1 else "")
        lines.append(f"{row.kind:<10} {cluster:>8} {' '.join(cells)} {row.total_us:10.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dynastore bench cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=800.0, help="requests per second (default 800)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds per kind (default 10)")
    parser.add_argument("--runs", type=int, default=1, help="repeat and report medians (default 1)")
    parser.add_argument("--security", action="store_true", help="with security on and credentials on every request")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    if not 1 <= args.rate <= 100_000:
        parser.error("--rate must be from 1 to 100000")
    if not 0.5 <= args.seconds <= 600:
        parser.error("--seconds must be from 0.5 to 600")
    if not 1 <= args.runs <= 20:
        parser.error("--runs must be from 1 to 20")
    with tempfile.TemporaryDirectory(prefix="dynastore-cost-") as tmp:
        runs = [measure(args.rate, args.seconds, Path(tmp), args.security) for _ in range(args.runs)]
    rows = median_rows(runs)
    print(format_table(rows, args.rate))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "rate": args.rate,
                    "seconds": args.seconds,
                    "runs": args.runs,
                    "security": args.security,
                    "rows": [{"kind": r.kind, "nodes": r.nodes, "per_node_us": list(r.per_node_us)} for r in rows],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
