"""Parsing and rendering for `dynastore bench wrk`: wrk's JSON line, redis-benchmark's output, CPU
times from /proc/PID/stat, per-request logs folded into per-second rows, and the Markdown reports.

Everything here is pure (text in, values out), so it is tested without servers. Running the load
generators and the stores is wrkbench.py's and wrkfaults.py's work.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

WRK_JSON_PREFIX = "WRK_JSON "
WRK_HIST_PREFIX = "WRK_HIST "
# Where a run's clients are: all on one node, or one load generator per node (`--spread`).
ONE = "one"
SPREAD = "spread"
PLACEMENTS = (ONE, SPREAD)
_PLACEMENT_LABELS = {ONE: "one node", SPREAD: "spread"}
# Per-second latency percentiles come from buckets 1 % wide (a value is reported as its bucket's upper
# edge), so that a second's histogram stays small whatever its request count.
BUCKETS_PER_E = 100


class ParseError(Exception):
    """A load generator's output or a /proc file was not what this parser expects."""


# --- wrk and redis-benchmark output ----------------------------------------------------------------------


def parse_wrk_hist(line: str) -> tuple[dict[int, int] | None, float]:
    """kv.lua's `WRK_HIST <cpu_us> <latency_us>:<count> ...` line: the histogram and the CPU seconds its
    listing took; no histogram for `WRK_HIST skipped <cpu_us>` (listing it would have cost too much)."""
    fields = line[len(WRK_HIST_PREFIX) :].split()
    skipped = bool(fields) and fields[0] == "skipped"
    if skipped:
        fields = fields[1:]
    if not fields or (skipped and len(fields) != 1):
        raise ParseError(f"wrk's histogram line is not `<cpu_us> us:count ...` or `skipped <cpu_us>`: {line[:80]!r}")
    histogram: dict[int, int] = {}
    try:
        cpu_us = int(fields[0])
        for pair in fields[1:]:
            us_text, count_text = pair.split(":")
            us, count = int(us_text), int(count_text)
            if us < 0 or count <= 0 or us in histogram:
                raise ParseError(f"wrk's histogram has a bad or repeated entry {pair!r}")
            histogram[us] = count
    except ValueError as exc:
        raise ParseError(f"wrk's histogram line does not parse: {exc}") from exc
    if cpu_us < 0 or (not skipped and not histogram):
        raise ParseError("wrk's histogram line has a negative CPU time or no entries")
    return (None if skipped else histogram), cpu_us / 1e6


def parse_wrk_json(stdout: str) -> dict[str, Any]:
    """The document kv.lua's done() prints on its `WRK_JSON ` line, with `histogram_us` (latency in
    µs -> count, None when wrk listed none) and `histogram_cpu_s` (the listing's CPU) from its `WRK_HIST `
    line."""
    histogram: tuple[dict[int, int] | None, float] = (None, 0.0)
    for line in stdout.splitlines():
        if line.startswith(WRK_HIST_PREFIX):
            histogram = parse_wrk_hist(line)
    for line in stdout.splitlines():
        if line.startswith(WRK_JSON_PREFIX):
            try:
                doc = json.loads(line[len(WRK_JSON_PREFIX) :])
            except json.JSONDecodeError as exc:
                raise ParseError(f"wrk's JSON line does not parse: {exc}") from exc
            for name in ("requests", "duration_us", "errors", "latency_us", "end_us"):
                if name not in doc:
                    raise ParseError(f"wrk's JSON line has no {name!r}")
            if not isinstance(doc["requests"], int) or doc["requests"] < 0 or doc["duration_us"] <= 0:
                raise ParseError("wrk's JSON line has a negative request count or no duration")
            out = dict(doc)
            out["histogram_us"], out["histogram_cpu_s"] = histogram
            return out
    raise ParseError("wrk printed no WRK_JSON line (did its script fail? its output:\n" + stdout[-2000:] + ")")


def split_connections(connections: int, generators: int) -> list[int]:
    """`connections` shared out over `generators` load generators as evenly as can be, the larger
    shares first (50 over 3 is 17, 17, 16), so that a spread run keeps the total of a one-node run."""
    if generators < 1:
        raise ValueError("at least one load generator")
    if connections < generators:
        raise ValueError(f"{connections} connections cannot give each of {generators} load generators one")
    share, extra = divmod(connections, generators)
    return [share + 1 if i < extra else share for i in range(generators)]


PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p99.9": 99.9}
EXACT = "exact"
WORST = "worst"


def wrk_percentile_us(histogram: Mapping[int, int], percent: float) -> int:
    """The `percent` percentile of a latency histogram (µs -> count) as wrk 4.1 computes it
    (stats_percentile): the first value whose cumulative count reaches round(p/100 x total + 0.5)."""
    total = sum(histogram.values())
    if total == 0:
        return 0
    rank = math.floor(percent / 100.0 * total + 0.5 + 0.5)
    seen = 0
    for us in sorted(histogram):
        seen += histogram[us]
        if seen >= rank:
            return us
    return max(histogram)


def merge_wrk_docs(docs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One run's figures from the WRK_JSON documents of several wrk processes run side by side.

    Requests and errors are summed, and so are the rates (each wrk's requests over its own duration:
    they ran at the same time, so the cluster answered their sum per second). When every wrk listed
    its latency histogram (kv.lua's WRK_HIST line), the histograms are summed and the percentiles, mean
    and maximum are those of the sum, computed as wrk does: exact (`latency_merge` "exact"). Otherwise
    each percentile is the worst wrk's, an upper bound on the merged one (if every wrk has p % of its
    requests at or below x, so has their union), the mean is weighted by requests (approximate: wrk's
    histogram holds its coordinated-omission corrections too) and the maximum is the largest
    (`latency_merge` "worst").
    """
    if not docs:
        raise ValueError("no wrk documents to merge")
    requests = sum(int(doc["requests"]) for doc in docs)
    errors: dict[str, int] = {}
    for doc in docs:
        for kind, count in doc["errors"].items():
            errors[kind] = errors.get(kind, 0) + int(count)
    latency_us: dict[str, float]
    answered = [doc for doc in docs if doc["requests"] > 0]
    # A wrk that got no answer lists no histogram and reports zero latencies: it says nothing of the others'.
    listed = [doc.get("histogram_us") for doc in answered]
    if all(h is not None for h in listed):
        merged: dict[int, int] = {}
        for histogram in listed:
            for us, count in (histogram or {}).items():
                merged[us] = merged.get(us, 0) + count
        total = sum(merged.values())
        latency_us = {name: float(wrk_percentile_us(merged, p)) for name, p in PERCENTILES.items()}
        latency_us["mean"] = sum(us * count for us, count in merged.items()) / total if total else 0.0
        latency_us["max"] = float(max(merged, default=0))
        how = EXACT
    else:
        latency_us = {name: max(doc["latency_us"][name] for doc in answered) for name in PERCENTILES}
        latency_us["mean"] = sum(doc["latency_us"]["mean"] * doc["requests"] for doc in answered) / requests
        latency_us["max"] = max(doc["latency_us"]["max"] for doc in docs)
        how = WORST
    return {
        "requests": requests,
        "ops_per_s": sum(doc["requests"] / (doc["duration_us"] / 1e6) for doc in docs),
        "duration_us": max(doc["duration_us"] for doc in docs),
        "errors": errors,
        "latency_us": latency_us,
        "latency_merge": how,
    }


def parse_redis_benchmark(stdout: str) -> dict[str, Any]:
    """Throughput and p50/p99/p99.9 (ms) from redis-benchmark's full (not --csv, not -q) output.

    Its percentile distribution lists steps (`99.902% <= 2.415 milliseconds ...`); a percentile is
    read as the first step at or above it, which is an upper bound, as wrk's are.
    """
    rps: float | None = None
    steps: list[tuple[float, float]] = []
    in_distribution = False
    for raw in stdout.splitlines():
        line = raw.strip()
        if line.startswith("Latency by percentile distribution"):
            in_distribution = True
            continue
        if line.startswith("Cumulative distribution of latencies"):
            in_distribution = False
            continue
        if line.startswith("throughput summary:"):
            try:
                rps = float(line.split(":", 1)[1].split()[0])
            except (ValueError, IndexError) as exc:
                raise ParseError(f"bad throughput line {line!r}") from exc
        if in_distribution and "% <=" in line:
            try:
                percent = float(line.split("%", 1)[0])
                ms = float(line.split("<=", 1)[1].split()[0])
            except (ValueError, IndexError) as exc:
                raise ParseError(f"bad percentile line {line!r}") from exc
            steps.append((percent, ms))
    if rps is None:
        raise ParseError("redis-benchmark printed no throughput summary")
    if not steps:
        raise ParseError("redis-benchmark printed no latency distribution")

    def at(percent: float) -> float:
        for step_percent, ms in steps:
            if step_percent >= percent:
                return ms
        return steps[-1][1]

    return {"ops_per_s": rps, "latency_ms": {"p50": at(50), "p99": at(99), "p99.9": at(99.9)}}


# --- CPU ---------------------------------------------------------------------------------------------------


def parse_proc_stat(text: str) -> int:
    """utime + stime, in clock ticks, from the text of /proc/PID/stat.

    The command name (field 2) is in parentheses and may hold spaces and parentheses itself, so the
    fields are counted from after its last ')': there field 3 (state) comes first, and utime and
    stime are fields 14 and 15.
    """
    close = text.rfind(")")
    if close < 0:
        raise ParseError("no command name in /proc/PID/stat")
    fields = text[close + 1 :].split()
    if len(fields) < 13:
        raise ParseError(f"/proc/PID/stat has {len(fields) + 2} fields, fewer than 15")
    try:
        utime, stime = int(fields[11]), int(fields[12])
    except ValueError as exc:
        raise ParseError(f"utime/stime are not integers: {fields[11]!r} {fields[12]!r}") from exc
    if utime < 0 or stime < 0:
        raise ParseError("negative utime/stime")
    return utime + stime


# --- per-second rows from per-request logs ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Second:
    """What the load generator saw complete in one second of a run."""

    second: int
    ok: int
    errors: int
    timeouts: int
    p99_9_ms: float | None
    max_ms: float | None


@dataclass
class _Bucket:
    ok: int = 0
    errors: int = 0
    timeouts: int = 0
    latencies: dict[int, int] = field(default_factory=dict)
    max_us: int = 0


def _bucket_of(latency_us: int) -> int:
    return int(math.log(max(latency_us, 1)) * BUCKETS_PER_E)


def _upper_edge_ms(bucket: int) -> float:
    return math.exp((bucket + 1) / BUCKETS_PER_E) / 1000.0


def percentile_ms(latencies: Mapping[int, int], percent: float) -> float | None:
    """The `percent` percentile of a bucketed histogram (bucket -> count), as the bucket's upper edge."""
    total = sum(latencies.values())
    if total == 0:
        return None
    rank = math.ceil(total * percent / 100.0)
    seen = 0
    for bucket in sorted(latencies):
        seen += latencies[bucket]
        if seen >= rank:
            return _upper_edge_ms(bucket)
    raise AssertionError("a rank beyond the histogram's total")


def parse_log_line(line: str) -> tuple[int, int, int]:
    """`<end_us> <latency_us> <status>` as kv.lua writes it."""
    parts = line.split()
    if len(parts) != 3:
        raise ParseError(f"a per-request log line has {len(parts)} fields, not 3: {line!r}")
    try:
        end_us, latency_us, status = int(parts[0]), int(parts[1]), int(parts[2])
    except ValueError as exc:
        raise ParseError(f"a per-request log line is not three integers: {line!r}") from exc
    if end_us < 0 or latency_us < 0 or not 100 <= status <= 599:
        raise ParseError(f"a per-request log line is out of range: {line!r}")
    return end_us, latency_us, status


def per_second(
    records: Iterable[tuple[int, int, int]],
    *,
    start_us: int,
    seconds: int,
    timeout_us: int,
    pending_start_us: Sequence[int] = (),
    end_us: int | None = None,
) -> list[Second]:
    """Fold per-request records into `seconds` rows counted from `start_us` (by completion time).

    ok = a 2xx answer within `timeout_us`; errors = any other status; timeouts = an answer later
    than `timeout_us` (its latency still counts in the percentiles), plus each request still
    unanswered at `end_us` that had waited longer than `timeout_us` (counted in the last row).
    Records outside the run's seconds are dropped.
    """
    assert seconds > 0 and timeout_us > 0
    rows = [_Bucket() for _ in range(seconds)]
    for done_us, latency_us, status in records:
        index = (done_us - start_us) // 1_000_000
        if not 0 <= index < seconds:
            continue
        row = rows[index]
        bucket = _bucket_of(latency_us)
        row.latencies[bucket] = row.latencies.get(bucket, 0) + 1
        row.max_us = max(row.max_us, latency_us)
        if not 200 <= status < 300:
            row.errors += 1
        elif latency_us > timeout_us:
            row.timeouts += 1
        else:
            row.ok += 1
    if end_us is not None:
        rows[-1].timeouts += sum(1 for started in pending_start_us if end_us - started > timeout_us)
    return [
        Second(
            i,
            row.ok,
            row.errors,
            row.timeouts,
            percentile_ms(row.latencies, 99.9),
            row.max_us / 1000.0 if row.latencies else None,
        )
        for i, row in enumerate(rows)
    ]


@dataclass(frozen=True, slots=True)
class PhaseSummary:
    """One phase (before, during or after a fault) of a run, over its whole seconds."""

    seconds: int
    ok_per_s_mean: float
    ok_per_s_min: int
    errors: int
    timeouts: int
    p99_9_ms_max: float | None


def summarize(rows: Sequence[Second], first: int, last: int) -> PhaseSummary:
    """Rows first..last-1 (whole seconds of one phase) summed up."""
    chosen = [row for row in rows if first <= row.second < last]
    if not chosen:
        return PhaseSummary(0, 0.0, 0, 0, 0, None)
    tails = [row.p99_9_ms for row in chosen if row.p99_9_ms is not None]
    return PhaseSummary(
        len(chosen),
        sum(row.ok for row in chosen) / len(chosen),
        min(row.ok for row in chosen),
        sum(row.errors for row in chosen),
        sum(row.timeouts for row in chosen),
        max(tails) if tails else None,
    )


# --- Markdown ----------------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _int(value: float) -> str:
    return f"{value:,.0f}"


def headline_markdown(doc: Mapping[str, Any]) -> str:
    """The side-by-side table of one `dynastore bench wrk` run (its wrk.json document)."""
    settings = doc["settings"]
    lines = [
        f"# wrk: GET and PUT of {settings['value_bytes']} B values over {settings['keys']:,} random keys",
        "",
        f"Run {doc['started']} on {doc['machine']['cpu']} ({doc['machine']['vcpus']} vCPUs, measured "
        f"{doc['machine']['effective_cores']:.2f} effective cores), shared with other work. "
        f"wrk {settings['threads']} thread, {settings['connections']} connections, "
        f"{settings['duration_s']} s per operation after a {settings['warmup_s']} s warm-up; redis with "
        f"redis-benchmark (1 thread, the same connections, value size and key space).",
        *(
            [f"dynastore nodes ran with --set {' '.join(settings['dynastore_overrides'])}."]
            if settings.get("dynastore_overrides")
            else []
        ),
        "",
        "| target | clients on | op | ops/s | p50 ms | p99 ms | p99.9 ms | errors | server CPU s |"
        " load generator CPU s | server CPU µs/op | machine share |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    vcpus = doc["machine"]["vcpus"]
    for run in doc["runs"]:
        lat = run["latency_ms"]
        server_cpu = sum(p["cpu_s"] for p in run["server_cpu"])
        per_op = server_cpu / run["requests"] * 1e6 if run["requests"] else 0.0
        errors = "-" if run["errors_total"] is None else run["errors_total"]
        lines.append(
            f"| {run['target']} | {placement_label(run)} | {run['op'].upper()} | {_int(run['ops_per_s'])} | "
            f"{_ms(lat['p50'])} | "
            f"{_ms(lat['p99'])} | {_ms(lat['p99.9'])} | {errors} | {server_cpu:.2f} | "
            f"{run['generator_cpu_s']:.2f} | {per_op:,.0f} | {machine_share(run, vcpus)} |"
        )
    ratios = doc.get("ratios", {})
    if ratios:
        lines += ["", "| ratio | GET ops/s | PUT ops/s | GET p99 | PUT p99 |", "| --- | ---: | ---: | ---: | ---: |"]
        for name, ratio in ratios.items():
            cells = [f"{ratio.get(k):.2f}x" if ratio.get(k) is not None else "-" for k in _RATIO_KEYS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    spread = [run for run in doc["runs"] if run.get("placement") == SPREAD]
    if spread:
        lines += [
            "",
            "Clients on: \"one node\" is every connection to one node (dynastore's node0, etcd's leader); "
            '"spread" is one wrk per node (1 thread each), the connections split between them and started '
            "together. A spread row's ops/s and errors are the sum of its wrk processes'; its latencies are "
            "those of their latency histograms summed (exact, computed as wrk computes its own).",
        ]
        worst = [f"{run['target']} {run['op'].upper()}" for run in spread if run.get("latency_merge") == WORST]
        if worst:
            lines[-1] += (
                f" Except {', '.join(worst)}: a wrk listed no histogram (too costly to list, see kv.lua), so "
                "each percentile there is the worst wrk's, an upper bound on the merged one."
            )
    lines += [
        "",
        "Machine share: the CPU the target's servers and its load generator used together, over the run's "
        "wall time times the vCPUs; well below 100 % means the run got only that much of a machine busy with "
        "other work (the 1-minute load average before each run is in wrk.json).",
        "",
        "CPU of each process over the measured seconds (utime + stime from /proc/PID/stat):",
        "",
    ]
    for run in doc["runs"]:
        parts = ", ".join(f"{p['name']} {p['cpu_s']:.2f} s" for p in run["server_cpu"])
        generator = f"{run['generator']} {run['generator_cpu_s']:.2f} s"
        shares = run.get("generators", [])
        if len(shares) > 1:
            generator = (
                f"{len(shares)} x {run['generator']} {run['generator_cpu_s']:.2f} s ("
                + ", ".join(
                    f"{g['node']}: {g['connections']} connections, {_int(g['ops_per_s'])} ops/s, "
                    f"p99 {_ms(g['latency_ms']['p99'])} ms, {g['cpu_s']:.2f} s"
                    for g in shares
                )
                + ")"
            )
        lines.append(f"- {run['target']} {run['op'].upper()} ({placement_label(run)}): {parts}; {generator}")
    lines += ["", *[f"- {note}" for note in doc["notes"]], ""]
    return "\n".join(lines)


_RATIO_KEYS = ("get_ops", "put_ops", "get_p99", "put_p99")


def machine_share(run: Mapping[str, Any], vcpus: int) -> str:
    """(servers' + load generator's CPU) / (wall time x vCPUs), as a percentage; '-' without a wall time."""
    wall_s = run.get("wall_s")
    if not wall_s or vcpus <= 0:
        return "-"
    used = sum(p["cpu_s"] for p in run["server_cpu"]) + run["generator_cpu_s"]
    return f"{100.0 * used / (wall_s * vcpus):.0f} %"


def placement_label(run: Mapping[str, Any]) -> str:
    """How a run's clients were placed; a run recorded before placements existed was on one node."""
    return _PLACEMENT_LABELS[run.get("placement", ONE)]


def ratios(
    runs: Sequence[Mapping[str, Any]],
    numerator: str,
    denominator: str,
    *,
    numerator_placement: str = ONE,
    denominator_placement: str = ONE,
) -> dict[str, float | None]:
    """numerator/denominator for ops/s, and for p99 (below 1 = numerator's tail is lower), each target's
    runs taken with the given placement of its clients."""

    def find(target: str, placement: str, op: str) -> Mapping[str, Any] | None:
        return next(
            (r for r in runs if r["target"] == target and r.get("placement", ONE) == placement and r["op"] == op),
            None,
        )

    out: dict[str, float | None] = {}
    for op in ("get", "put"):
        a, b = find(numerator, numerator_placement, op), find(denominator, denominator_placement, op)
        ok = a is not None and b is not None and b["ops_per_s"] > 0 and b["latency_ms"]["p99"] > 0
        out[f"{op}_ops"] = a["ops_per_s"] / b["ops_per_s"] if ok and a and b else None
        out[f"{op}_p99"] = a["latency_ms"]["p99"] / b["latency_ms"]["p99"] if ok and a and b else None
    return out


def faults_markdown(doc: Mapping[str, Any]) -> str:
    """Per-second tables and a summary of one `dynastore bench wrk --faults` run (faults.json)."""
    settings = doc["settings"]
    lines = [
        "# Faults under load: dynastore against etcd, per second",
        "",
        f"Run {doc['started']}, shared machine. {' and '.join(op.upper() for op in settings['ops'])} of "
        f"{settings['value_bytes']} B values over "
        f"{settings['keys']:,} random keys, wrk with {settings['connections']} connections (one per thread, so "
        f"each response is timed against its request) on a node that is not faulted; {settings['before_s']} s "
        f"before, {settings['fault_s']} s of fault, {settings['after_s']} s after. A request slower than "
        f"{settings['timeout_ms']} ms is a timeout.",
        "",
        "## Summary",
        "",
        "| fault | op | system | ok/s before | ok/s during (mean) | min ok/s during | errors during+after |"
        " timeouts during+after | p99.9 ms before | max p99.9 ms during+after | wrk socket errors |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for scenario in doc["scenarios"]:
        label = f"{scenario['fault']} | {scenario['op'].upper()}"
        for system, result in scenario["systems"].items():
            if "error" in result:
                lines.append(f"| {label} | {system} | {result['error']} | | | | | | | |")
                continue
            s = result["summary"]
            b, d, a = s["before"], s["during"], s["after"]
            lines.append(
                f"| {label} | {system} | {_int(b['ok_per_s_mean'])} | {_int(d['ok_per_s_mean'])} | "
                f"{d['ok_per_s_min']:,} | {d['errors'] + a['errors']} | {d['timeouts'] + a['timeouts']} | "
                f"{_ms(b['p99_9_ms_max'])} | {_ms(_max(d['p99_9_ms_max'], a['p99_9_ms_max']))} | "
                f"{socket_errors(result['wrk_errors'])} |"
            )
    for scenario in doc["scenarios"]:
        systems = [name for name, result in scenario["systems"].items() if "error" not in result]
        if not systems:
            continue
        lines += ["", f"## {scenario['fault']}, {scenario['op'].upper()}: {scenario['description']}", ""]
        for name in systems:
            result = scenario["systems"][name]
            answers = ", ".join(f"{count:,} x {status}" for status, count in result.get("statuses", {}).items())
            lines.append(f"- {name}: {result['victim']}; answers by status: {answers or 'none'}")
        header = "| s | phase | " + " | ".join(f"{n} ok | {n} err+to | {n} p99.9 ms" for n in systems) + " |"
        lines += ["", header, "| ---: | --- |" + " ---: | ---: | ---: |" * len(systems)]
        count = len(scenario["systems"][systems[0]]["seconds"])
        for i in range(count):
            cells = []
            for name in systems:
                row = scenario["systems"][name]["seconds"][i]
                cells.append(f"{row['ok']:,} | {row['errors'] + row['timeouts']} | {_ms(row['p99_9_ms'])}")
            lines.append(f"| {i} | {phase_of(i, settings)} | " + " | ".join(cells) + " |")
    lines += ["", *[f"- {note}" for note in doc["notes"]], ""]
    return "\n".join(lines)


def socket_errors(errors: Mapping[str, int]) -> int:
    """wrk's connect, read and write errors: connections that broke (not answers with an error status)."""
    return sum(errors.get(kind, 0) for kind in ("connect", "read", "write"))


def _max(a: float | None, b: float | None) -> float | None:
    values = [v for v in (a, b) if v is not None]
    return max(values) if values else None


def phase_of(second: int, settings: Mapping[str, Any]) -> str:
    if second < settings["before_s"]:
        return "before"
    if second < settings["before_s"] + settings["fault_s"]:
        return "fault"
    return "after"
