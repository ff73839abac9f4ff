"""What a YCSB benchmark run reports: its JSON document, a text table, a Markdown page and two plots.

The document (`results.json`) is the source of everything else: the table, the Markdown, the ratios
and the Dynamo-paper comparisons are computed from its `runs`, so they can be regenerated from a
saved file. Plots need matplotlib (the `bench` extras); without it they are skipped with a note.

Pure apart from `write_plots`, which writes files; nothing here runs a benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dynastore.bench.ycsb_driver import Outcome
from dynastore.bench.ycsb_targets import (
    ALL_TARGETS,
    DYNASTORE_HTTP,
    DYNASTORE_HTTP_BUFFERED,
    DYNASTORE_PB,
    DYNASTORE_RING,
)
from dynastore.bench.ycsb_workload import READ, READ_MODIFY_WRITE, UPDATE, WORKLOADS
from dynastore.histogram import PERCENTILES

LATENCY_FIELDS = ("mean", "min", *(f"p{p:g}" for p in PERCENTILES), "max")
# Operations in the order tables list them.
OPERATION_ORDER = ("insert", READ, UPDATE, READ_MODIFY_WRITE)
TARGET_ORDER = (*ALL_TARGETS, DYNASTORE_HTTP_BUFFERED)
# The peers dynastore is compared with, in the order the ratios list them.
PEERS = ("etcd", "redis", "pysyncobj")

# The Dynamo paper (DeCandia et al., SOSP 2007), section 6.4, Table 2, in milliseconds.
PAPER_COORDINATION = {
    "server-driven": {"read p99.9": 68.9, "write p99.9": 68.5, "read mean": 3.9, "write mean": 4.02},
    "client-driven": {"read p99.9": 30.4, "write p99.9": 30.4, "read mean": 1.55, "write mean": 1.9},
}
# Section 6.1: buffered writes cut the 99.9th percentile write latency "by a factor of 5" at peak traffic.
PAPER_BUFFERED_P999_FACTOR = 5.0


def run_record(
    target: str,
    workload: str,
    outcome: Outcome,
    *,
    concurrency: int,
    nodes: int,
    rate_per_s: float | None = None,
    variant: str = "",
) -> dict[str, Any]:
    """One run (or load) as results.json holds it. `variant` names what sets the run apart from the
    main comparison (a larger cluster, say); the main comparison's runs have none."""
    # Per second of the measured window; a window of no length (nothing ran) reports zeros, not NaN,
    # so that results.json stays strict JSON.
    per_s = 1.0 / outcome.window_s if outcome.window_s > 0 else 0.0
    ops: dict[str, Any] = {}
    for op in sorted(set(outcome.histograms) | set(outcome.errors), key=_op_rank):
        histogram = outcome.histograms.get(op)
        count = histogram.total if histogram is not None else 0
        ops[op] = {
            "count": count,
            "throughput_ops_s": count * per_s,
            "errors": outcome.errors.get(op, 0),
            "latency_ms": histogram.summary_ms() if histogram is not None and count else None,
        }
    return {
        "target": target,
        "variant": variant,
        "nodes": nodes,
        "workload": workload,
        "mode": "open loop" if rate_per_s else "closed loop",
        "rate_per_s": rate_per_s,
        "concurrency": concurrency,
        "throughput_ops_s": outcome.operations * per_s,
        "operations": outcome.operations,
        "errors": sum(outcome.errors.values()),
        "error_samples": list(outcome.error_samples),
        "window_s": outcome.window_s,
        "driver_cpu_cores": outcome.driver_cpu_s * per_s,
        "server_cpu_cores": None if outcome.server_cpu_s is None else outcome.server_cpu_s * per_s,
        "counters": dict(outcome.counters),
        "ops": ops,
    }


def _op_rank(op: str) -> int:
    return OPERATION_ORDER.index(op) if op in OPERATION_ORDER else len(OPERATION_ORDER)


def _target_rank(target: str) -> int:
    return TARGET_ORDER.index(target) if target in TARGET_ORDER else len(TARGET_ORDER)


def sorted_runs(runs: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Runs by workload, then target in the usual order, main comparison first, closed loop first."""
    return sorted(runs, key=lambda r: (r["workload"], r["variant"], _target_rank(r["target"]), r["rate_per_s"] or 0.0))


def find_run(
    runs: Iterable[Mapping[str, Any]],
    target: str,
    workload: str,
    *,
    open_loop: bool = False,
    variant: str = "",
    nodes: int | None = None,
) -> Mapping[str, Any] | None:
    """The run of `target` on `workload` in the main comparison (or the variant named), if any."""
    for run in runs:
        if (
            run["target"] == target
            and run["workload"] == workload
            and bool(run["rate_per_s"]) == open_loop
            and (run["variant"] == variant if nodes is None else run["nodes"] == nodes)
        ):
            return run
    return None


def latency(run: Mapping[str, Any] | None, op: str, field: str) -> float | None:
    if run is None:
        return None
    entry = run["ops"].get(op)
    if entry is None or entry["latency_ms"] is None:
        return None
    value: float = entry["latency_ms"][field]
    return value


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0 or math.isnan(denominator):
        return None
    return numerator / denominator


# --- Text ------------------------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 2) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _label(run: Mapping[str, Any]) -> str:
    target: str = run["target"]
    variant = f" ({run['variant']})" if run["variant"] else ""
    return target + variant + (f" @{run['rate_per_s']:g}/s" if run["rate_per_s"] else "")


def format_table(runs: Iterable[Mapping[str, Any]]) -> str:
    """Throughput and latency percentiles (ms) of every run: a line for the run, one per operation."""
    head = ("target", "wl", "operation", "ops/s", "mean", "p50", "p95", "p99", "p99.9", "max", "errors", "cpu")
    rows: list[tuple[str, ...]] = [head]
    for run in sorted_runs(runs):
        server = run["server_cpu_cores"]
        cpu = f"driver {run['driver_cpu_cores']:.2f}" + (f" servers {server:.2f}" if server is not None else "")
        rows.append((_label(run), run["workload"], "all", _num(run["throughput_ops_s"], 0), *[""] * 6, "", cpu))
        for op, entry in run["ops"].items():
            lat = entry["latency_ms"] or {}
            shown = (_num(lat.get(f)) for f in ("mean", "p50", "p95", "p99", "p99.9", "max"))
            rows.append(("", "", op, _num(entry["throughput_ops_s"], 0), *shown, str(entry["errors"]), ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(widths[i]) if i < 3 or i == len(head) - 1 else cell.rjust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


# --- Ratios and the paper's comparisons -------------------------------------------------------------------


def ratios(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """For each workload, dynastore's throughput and p99s over each peer's (closed-loop runs)."""
    out: list[dict[str, Any]] = []
    workloads = sorted({r["workload"] for r in runs})
    for workload in workloads:
        for ours in (DYNASTORE_HTTP, DYNASTORE_PB, DYNASTORE_RING):
            mine = find_run(runs, ours, workload)
            if mine is None:
                continue
            for peer in PEERS:
                theirs = find_run(runs, peer, workload)
                if theirs is None:
                    continue
                write = READ_MODIFY_WRITE if workload == "F" else UPDATE
                out.append(
                    {
                        "workload": workload,
                        "dynastore": ours,
                        "peer": peer,
                        "throughput": ratio(mine["throughput_ops_s"], theirs["throughput_ops_s"]),
                        "read_p99": ratio(latency(mine, READ, "p99"), latency(theirs, READ, "p99")),
                        "write_p99": ratio(latency(mine, write, "p99"), latency(theirs, write, "p99")),
                    }
                )
    return out


def _coordination(server: Mapping[str, Any], client: Mapping[str, Any]) -> dict[str, Any]:
    rows = {}
    for name, op, field in (
        ("read mean", READ, "mean"),
        ("write mean", UPDATE, "mean"),
        ("read p99.9", READ, "p99.9"),
        ("write p99.9", UPDATE, "p99.9"),
    ):
        s, c = latency(server, op, field), latency(client, op, field)
        rows[name] = {"server-driven": s, "client-driven": c, "server/client": ratio(s, c)}
    # A p99.9 rests on a thousandth of the samples: the count says how far to trust it.
    samples = {
        name: {side: run["ops"][op]["count"] if op in run["ops"] else 0 for side, run in sides}
        for name, op in (("read", READ), ("write", UPDATE))
        for sides in [(("server-driven", server), ("client-driven", client))]
    }
    return {
        "workload": server["workload"],
        "nodes": server["nodes"],
        "samples": samples,
        "mode": server["mode"],
        "rate_per_s": server["rate_per_s"],
        "throughput_ops_s": {"server-driven": server["throughput_ops_s"], "client-driven": client["throughput_ops_s"]},
        "latency_ms": rows,
    }


def paper_workload(runs: Iterable[Mapping[str, Any]]) -> str | None:
    """The workload the paper's comparisons are read from: A when run, else the first with updates."""
    writing = sorted({r["workload"] for r in runs if WORKLOADS[r["workload"]].update > 0})
    return "A" if "A" in writing else (writing[0] if writing else None)


def paper_comparisons(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The Dynamo paper's two measurements, from whichever runs are present.

    coordination: server-driven (dynastore-http) against client-driven (dynastore-ring) coordination,
    for every cluster size and rate both were run at (at peak, closed loop, and at a fixed rate).
    buffered_writes: durable against buffered writes (dynastore-http-buffered) at peak, same cluster size.
    """
    workload = paper_workload(runs)
    coordination: list[dict[str, Any]] = []
    buffered: dict[str, Any] | None = None
    if workload is not None:
        servers = [r for r in runs if r["target"] == DYNASTORE_HTTP and r["workload"] == workload]
        for server in sorted(servers, key=lambda r: (r["nodes"], r["rate_per_s"] or 0.0)):
            client = find_run(
                runs, DYNASTORE_RING, workload, open_loop=bool(server["rate_per_s"]), nodes=server["nodes"]
            )
            if client is not None and client["rate_per_s"] == server["rate_per_s"]:
                coordination.append(_coordination(server, client))
        fast = next((r for r in runs if r["target"] == DYNASTORE_HTTP_BUFFERED and r["workload"] == workload), None)
        durable = None if fast is None else find_run(runs, DYNASTORE_HTTP, workload, nodes=fast["nodes"])
        if durable is not None and fast is not None:
            rows = {}
            for field in ("mean", "p99", "p99.9"):
                d, b = latency(durable, UPDATE, field), latency(fast, UPDATE, field)
                rows[f"write {field}"] = {"durable": d, "buffered": b, "durable/buffered": ratio(d, b)}
            buffered = {
                "workload": workload,
                "nodes": fast["nodes"],
                "throughput_ops_s": {"durable": durable["throughput_ops_s"], "buffered": fast["throughput_ops_s"]},
                "latency_ms": rows,
            }
    return {
        "coordination": coordination,
        "buffered_writes": buffered,
        "paper": {
            "coordination_ms": PAPER_COORDINATION,
            "buffered_write_p99.9_factor": PAPER_BUFFERED_P999_FACTOR,
        },
    }


def format_paper(paper: Mapping[str, Any]) -> str:
    lines: list[str] = []
    for c in paper["coordination"]:
        how = "at peak (closed loop)" if not c["rate_per_s"] else f"at {c['rate_per_s']:g} ops/s (open loop)"
        tput = c["throughput_ops_s"]
        n = c["samples"]
        lines.append(
            f"Server- vs client-driven coordination, {c['nodes']} nodes, workload {c['workload']} {how}: "
            f"{tput['server-driven']:,.0f} vs {tput['client-driven']:,.0f} ops/s; samples: reads "
            f"{n['read']['server-driven']:,} / {n['read']['client-driven']:,}, writes "
            f"{n['write']['server-driven']:,} / {n['write']['client-driven']:,}"
        )
        lines.append(f"  {'ms':<12} {'server':>9} {'client':>9} {'ratio':>7}   paper: server  client  ratio")
        for name, row in c["latency_ms"].items():
            p_s, p_c = PAPER_COORDINATION["server-driven"][name], PAPER_COORDINATION["client-driven"][name]
            lines.append(
                f"  {name:<12} {_num(row['server-driven']):>9} {_num(row['client-driven']):>9} "
                f"{_x(row['server/client']):>7}   {p_s:>13} {p_c:>7} {p_s / p_c:>5.2f}x"
            )
    b = paper["buffered_writes"]
    if b is not None:
        tput = b["throughput_ops_s"]
        lines.append(
            f"Durable vs buffered writes, {b['nodes']} nodes, workload {b['workload']} at peak: "
            f"{tput['durable']:,.0f} vs {tput['buffered']:,.0f} ops/s"
        )
        lines.append(f"  {'ms':<12} {'durable':>9} {'buffered':>9} {'ratio':>7}")
        for name, row in b["latency_ms"].items():
            lines.append(
                f"  {name:<12} {_num(row['durable']):>9} {_num(row['buffered']):>9} {_x(row['durable/buffered']):>7}"
            )
        lines.append(f"  paper: buffering cut write p99.9 about {PAPER_BUFFERED_P999_FACTOR:g}x at peak")
    return "\n".join(lines) if lines else "(no runs for the paper's comparisons)"


# --- Markdown ----------------------------------------------------------------------------------------------


def _md_table(head: Sequence[str], rows: Iterable[Sequence[str]], right_from: int = 1) -> list[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(head))]
    out = ["| " + " | ".join(head) + " |", "| " + " | ".join(align) + " |"]
    out += ["| " + " | ".join(row) + " |" for row in rows]
    return out


def markdown(doc: Mapping[str, Any]) -> str:
    """results.md: the setup, throughput, latencies, ratios, the paper's comparisons, what was skipped."""
    runs: list[Mapping[str, Any]] = doc["runs"]
    settings, machine = doc["settings"], doc["machine"]
    closed = [r for r in runs if not r["rate_per_s"]]
    workloads = sorted({r["workload"] for r in closed})
    targets = sorted({r["target"] for r in closed}, key=_target_rank)
    out = ["# YCSB benchmark: dynastore and its peers", ""]
    out += [
        f"Command: `{doc['command']}`  ",
        f"Ran {doc['started_at']}, {doc['elapsed_s'] / 60:.1f} minutes in all.  ",
        f"Machine: {machine['cpu']}, {machine['vcpus']} vCPUs (measured throughput of "
        f"{machine['effective_cores']:.2f} cores with every vCPU busy), {machine['memory_gib']:.0f} GiB, "
        f"{machine['os']}, Python {machine['python']}.  ",
        f"Settings: {settings['records']:,} records of {settings['value_bytes']} bytes, zipfian "
        f"{settings['zipf_theta']} (scrambled), {settings['concurrency']} closed-loop clients in "
        f"{settings['processes']} driver process(es), {settings['warmup_s']:g} s warm-up then "
        f"{settings['duration_s']:g} s measured per workload; workloads run in the order "
        f"{', '.join(settings['run_order'])} on the data of one load.",
        "",
        "Driver and servers share this machine, so every figure is for the whole system on it; "
        "`driver`/`servers` columns give the CPU cores each side kept busy.",
        "",
        "## Throughput (operations per second)",
        "",
    ]
    rows = []
    for variant in sorted({r["variant"] for r in closed}):
        for target in targets:
            found = [find_run(closed, target, workload, variant=variant) for workload in workloads]
            if any(found):
                name = target + (f" ({variant})" if variant else "")
                rows.append([name, *(_num(run["throughput_ops_s"], 0) if run else "-" for run in found)])
    out += _md_table(["target", *workloads], rows)
    out += ["", "## Latency (milliseconds)", ""]
    rows = []
    for run in sorted_runs(runs):
        for op, entry in run["ops"].items():
            lat = entry["latency_ms"] or {}
            server = run["server_cpu_cores"]
            rows.append(
                [
                    run["workload"],
                    _label(run),
                    op,
                    _num(entry["throughput_ops_s"], 0),
                    *(_num(lat.get(f)) for f in ("mean", "p50", "p95", "p99", "p99.9")),
                    str(entry["errors"]),
                    _num(run["driver_cpu_cores"]),
                    _num(server) if server is not None else "-",
                ]
            )
    head = ["wl", "target", "op", "ops/s", "mean", "p50", "p95", "p99", "p99.9", "errors", "driver", "servers"]
    out += _md_table(head, rows, right_from=3)
    ratio_rows = doc.get("ratios") or []
    if ratio_rows:
        out += ["", "## dynastore relative to its peers (dynastore / peer)", ""]
        out += [
            "Throughput above 1 means dynastore is faster; latency above 1 means dynastore is slower.",
            "",
        ]
        out += _md_table(
            ["wl", "dynastore", "peer", "throughput", "read p99", "write p99"],
            (
                [
                    r["workload"],
                    r["dynastore"],
                    r["peer"],
                    _x(r["throughput"]),
                    _x(r["read_p99"]),
                    _x(r["write_p99"]),
                ]
                for r in ratio_rows
            ),
            right_from=3,
        )
    paper = doc.get("paper")
    if paper and (paper["coordination"] or paper["buffered_writes"]):
        out += ["", "## The Dynamo paper's measurements", "", "```", format_paper(paper), "```"]
    notes = _notes(doc)
    if notes:
        out += ["", "## Notes", "", *[f"- {note}" for note in notes]]
    return "\n".join(out) + "\n"


def _notes(doc: Mapping[str, Any]) -> list[str]:
    notes = []
    for entry in doc.get("skipped", []):
        notes.append(f"{entry['target']} skipped: {entry['reason']}")
    for entry in doc.get("failed", []):
        notes.append(f"{entry['target']} failed: {entry['error'].splitlines()[0]}")
    for run in doc["runs"]:
        if run["errors"]:
            samples = "; ".join(run["error_samples"][:2])
            notes.append(f"{_label(run)} {run['workload']}: {run['errors']} failed requests ({samples})")
        siblings = run["counters"].get("reads_with_siblings")
        if siblings:
            notes.append(
                f"{_label(run)} {run['workload']}: {siblings} reads, warm-up included, found siblings "
                "(concurrent updates of a hot key); the next update, sent with their merged context, resolves them"
            )
    for peer, version in doc.get("versions", {}).items():
        notes.append(f"{peer}: {version}")
    return notes


# --- Plots -------------------------------------------------------------------------------------------------


def write_plots(doc: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """throughput.png and latency.png in `out_dir`; returns the files written (none without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    # The main comparison only: variants (a larger cluster, a fixed rate) have tables of their own.
    runs = [r for r in doc["runs"] if not r["rate_per_s"] and not r["variant"]]
    workloads = sorted({r["workload"] for r in runs})
    targets = sorted({r["target"] for r in runs}, key=_target_rank)
    if not runs:
        return []
    colours = plt.get_cmap("tab10")
    written = []

    fig, ax = plt.subplots(figsize=(10, 5))
    width = 0.8 / max(1, len(targets))
    for t, target in enumerate(targets):
        values = []
        for workload in workloads:
            run = find_run(runs, target, workload)
            values.append(run["throughput_ops_s"] if run else 0.0)
        xs = [w + (t - (len(targets) - 1) / 2) * width for w in range(len(workloads))]
        ax.bar(xs, values, width, label=target, color=colours(t))
        for x, v in zip(xs, values, strict=True):
            if v > 0:
                ax.text(x, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_xticks(range(len(workloads)), [f"workload {w}" for w in workloads])
    ax.set_yscale("log")
    ax.set_ylabel("operations per second (log scale)")
    ax.set_title(f"YCSB throughput, {doc['settings']['concurrency']} closed-loop clients")
    # Below the axes: above them it would hide the tallest bars.
    ax.legend(fontsize=8, ncols=4, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    path = out_dir / "throughput.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)

    fig, axes = plt.subplots(2, len(workloads), figsize=(4 * len(workloads) + 1, 8), squeeze=False)
    shown = ("p50", "p99", "p99.9")
    for w, workload in enumerate(workloads):
        write_op = READ_MODIFY_WRITE if workload == "F" else UPDATE
        for row, op in enumerate((READ, write_op)):
            ax = axes[row][w]
            bar = 0.8 / len(shown)
            present = False
            for s, field in enumerate(shown):
                values = [latency(find_run(runs, target, workload), op, field) or 0.0 for target in targets]
                present = present or any(values)
                xs = [t + (s - (len(shown) - 1) / 2) * bar for t in range(len(targets))]
                ax.bar(xs, values, bar, label=field, color=colours(s))
            ax.set_title(f"{workload}: {op}", fontsize=10)
            ax.set_xticks(range(len(targets)), targets, rotation=45, ha="right", fontsize=7)
            if present:
                ax.set_yscale("log")
                ax.set_ylabel("ms (log scale)")
            else:
                ax.set_yticks([])
                ax.text(0.5, 0.5, f"no {op}s", ha="center", va="center", transform=ax.transAxes)
            if w == 0 and row == 0:
                ax.legend(fontsize=8)
    fig.suptitle("YCSB latency percentiles")
    fig.tight_layout()
    path = out_dir / "latency.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
    return written
