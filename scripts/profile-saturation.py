"""Where each microsecond of a request goes at saturation: CPU per operation, per node process and per
layer, for PUT and GET of 1 KB values under `wrk` (1 thread, 50 connections, all sent to node0).

    python scripts/profile-saturation.py [--seconds 10] [--rate 149] [--kinds put,get] [--set name=value ...]
                                         [--spread] [--etcd] [--no-profile] [--keep DIR] [--json FILE]

Method. A fresh 3-node cluster (the same processes `dynastore up` starts, durable, N=3 R=2 W=2) is
warmed with 5 s of PUTs (whose keys the GET runs read). Then for each kind, two runs of `wrk` of the
same length:

1. unprofiled: the CPU (user and system time from /proc) each node spent over the run divided by the
   requests wrk completed: µs per operation per node, and how much of it the kernel's (system time);
2. profiled: py-spy samples every node at once (`--native`, so C frames show: a system call, the
   garbage collector, a wait for the GIL). A sample whose innermost frames wait on a lock (the GIL, the
   writer thread's queue) is no CPU and is dropped. A sample whose innermost frame is a system call
   wrapper counts to the kernel; every other sample goes to the layer of its innermost frame that
   belongs to one, by module path (LAYERS below), and the writer thread's to "storage: writer thread".

A node's system time (run 1) is the "kernel" row; its user time is split over the other layers in
proportion to their samples (run 2). So the µs come from the unprofiled run, which py-spy does not
slow down, and only the shares from the profiled one. With --spread, one wrk thread per node sends to
that node (all to node0 otherwise, as a single client would; the replicas then idle half the time).
The machine is shared: compare figures of one run with each other, not with another day's.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from dynastore.localcluster import LocalCluster

WRK_THREADS = 1
WRK_CONNECTIONS = 50
WARMUP_S = 5

# Shared by every script. With WRK_TARGETS set (host:port,...), thread i sends to target i mod their
# count (the load spread over the nodes, as a client's load balancer spreads it); without it, every
# thread sends to the URL given. Each thread names its keys with its own number (`tid`), and `done`
# prints how many requests each thread made (the keys it wrote), for the GET runs to read back.
SETUP_LUA = """
local targets = {}
for hp in string.gmatch(os.getenv("WRK_TARGETS") or "", "[^,]+") do targets[#targets + 1] = hp end
local threads = {}
setup = function(thread)
  thread:set("tid", #threads)
  if #targets > 0 then
    local host, port = targets[#threads % #targets + 1]:match("^(.+):(%d+)$")
    thread.addr = wrk.lookup(host, port)[1]
  end
  threads[#threads + 1] = thread
end
done = function(summary, latency, requests)
  for i, thread in ipairs(threads) do io.write(string.format("WROTE %d %d\\n", i - 1, thread:get("n") or 0)) end
  io.write(string.format("RESULT %d %d %d %d %d %d\\n", summary.requests, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
-- GET: a random key among those thread `t` of the PUT run wrote, for a random t.
local counts = {}
local function written_key(prefix)
  local t = math.random(0, #counts - 1)
  return prefix .. t .. "-" .. math.random(1, counts[t + 1])
end
local prefix = "k"
n = 0
init = function(args)
  prefix = args[1] or prefix
  for c in string.gmatch(args[2] or "1", "[^,]+") do counts[#counts + 1] = math.max(1, tonumber(c)) end
end
"""
# A fresh key per request (the keys hash to random partitions); GET reads keys the PUT runs wrote.
PUT_LUA = (
    SETUP_LUA
    + """
local body = string.rep("v", 1000)
local headers = {["Content-Type"] = "application/octet-stream"}
request = function()
  n = n + 1
  return wrk.format("PUT", "/buckets/bench/keys/" .. prefix .. tid .. "-" .. n, headers, body)
end
"""
)
GET_LUA = (
    SETUP_LUA
    + """
request = function()
  return wrk.format("GET", "/buckets/bench/keys/" .. written_key(prefix))
end
"""
)

# The same two loads against etcd's JSON gateway (keys and values in base64, as it wants them).
ETCD_LUA_COMMON = (
    SETUP_LUA
    + """
local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local function b64(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local v = a * 65536 + (b or 0) * 256 + (c or 0)
    for j = 3, 0, -1 do
      local k = math.floor(v / 64 ^ j) % 64 + 1
      out[#out + 1] = alphabet:sub(k, k)
    end
  end
  local pad = (3 - #s % 3) % 3
  return table.concat(out):sub(1, #out - pad) .. string.rep("=", pad)
end
local headers = {["Content-Type"] = "application/json"}
"""
)
ETCD_PUT_LUA = (
    ETCD_LUA_COMMON
    + """
local value = b64(string.rep("v", 1000))
request = function()
  n = n + 1
  return wrk.format("POST", "/v3/kv/put", headers,
                    '{"key":"' .. b64(prefix .. tid .. "-" .. n) .. '","value":"' .. value .. '"}')
end
"""
)
ETCD_GET_LUA = (
    ETCD_LUA_COMMON
    + """
request = function()
  return wrk.format("POST", "/v3/kv/range", headers, '{"key":"' .. b64(written_key(prefix)) .. '"}')
end
"""
)

# Layers by module path, checked from a sample's innermost frame outwards; the first that matches wins.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("HTTP (parse, route, answer)", ("dynastore/api/", "httptools", "/parser.c", "parser.pyx")),
    ("core protocol", ("dynastore/core/", "dynastore/storage/checks.py")),
    ("peer links (framing, MAC, msgpack)", ("dynastore/net/", "msgpack", "blake2", "hashlib")),
    ("storage engine (loop thread)", ("dynastore/storage/", "cpython.c", "mdb.c", "midl.c", "lmdb")),
    ("metrics, logging", ("dynastore/runtime/metrics.py", "dynastore/histogram.py", "logging/")),
    ("runtime (futures, effects)", ("dynastore/runtime/",)),
)
GC = "garbage collector"
WRITER = "storage: writer thread"
LOOP = "event loop (uvloop, asyncio)"
KERNEL = "kernel (system time: sockets, LMDB writes and syncs)"
ORDER = (*(name for name, _ in LAYERS), WRITER, GC, LOOP, KERNEL)

# The frames that run the event loop: what lies inside them is the node's work.
LOOP_ENTRY = ("asyncio/runners.py", "uvloop/__init__.py")
# Innermost frames that mean the thread waits for a lock or a condition (the GIL above all): no CPU.
# A loop thread in epoll_wait is idle too (py-spy's --native samples count it as running, and a thread
# in fdatasync as well).
WAITS = (
    "pthread_cond_",
    "PyThread_acquire_lock",
    "sem_wait",
    "sem_timedwait",
    "take_gil",
    "futex",
    "__lll_lock",
    "epoll_wait",
    "epoll_pwait",
    # A sync mostly waits for the disk; the kernel's CPU in it is in the system time all the same.
    "fdatasync",
    "fsync",
    "msync",
)
# System call wrappers of libc (the innermost frame of a sample in the kernel).
SYSCALL = re.compile(
    r"^(__libc_)?(write|writev|read|readv|send|sendto|sendmsg|recv|recvfrom|recvmsg|epoll_p?wait|epoll_ctl|"
    r"fdatasync|fsync|msync|pwrite64|pread64|pwrite|pread|statfs64|statvfs|fstatfs|getpid|madvise|mmap64|mmap|"
    r"munmap|mprotect|brk|accept4?|close|ioctl|openat64|openat|lseek64|fstat|fstat64|clock_nanosleep|"
    r"__close|syscall)\b"
)


def cpu_ticks(pid: int) -> tuple[int, int]:
    """User and system CPU time of a process so far, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]), int(fields[12])


def run_wrk(url: str, script: Path, seconds: int, *args: str, spread: tuple[str, ...] = ()) -> dict[str, Any]:
    """One wrk run; with `spread` (host:port of every node) one thread per node, each to its own."""
    threads = len(spread) or WRK_THREADS
    env = {**os.environ, "WRK_TARGETS": ",".join(spread)}
    command = ["wrk", f"-t{threads}", f"-c{WRK_CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s"]
    command += ["-s", str(script), url, "--", *args]
    out = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
        env=env,
    ).stdout
    wrote = [int(n) for _, n in sorted((int(t), n) for t, n in re.findall(r"^WROTE (\d+) (\d+)$", out, re.M))]
    match = re.search(r"^RESULT (\d+) (\d+) (\d+) (\d+) (\d+) (\d+)$", out, re.M)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if match is None or rate is None:
        raise RuntimeError(f"wrk said:\n{out}")
    requests, status_errors, socket_errors, p50, p99, p999 = (int(g) for g in match.groups())
    return {
        "wrote": ",".join(str(n) for n in wrote),
        "requests": requests,
        "ops_s": float(rate.group(1)),
        "non_2xx": status_errors,
        "socket_errors": socket_errors,
        "p50_ms": p50 / 1000,
        "p99_ms": p99 / 1000,
        "p999_ms": p999 / 1000,
    }


def measured_run(
    url: str, script: Path, seconds: int, pids: list[int], *args: str, spread: tuple[str, ...] = ()
) -> dict[str, object]:
    """One wrk run and the CPU each node spent over it (µs per operation, user and system)."""
    before = [cpu_ticks(pid) for pid in pids]
    result = run_wrk(url, script, seconds, *args, spread=spread)
    after = [cpu_ticks(pid) for pid in pids]
    us_per_tick = 1e6 / os.sysconf("SC_CLK_TCK")
    ops = max(1, result["requests"])
    user = [(a[0] - b[0]) * us_per_tick / ops for a, b in zip(after, before, strict=True)]
    system = [(a[1] - b[1]) * us_per_tick / ops for a, b in zip(after, before, strict=True)]
    rss_mb = [_rss_bytes(pid) / 2**20 for pid in pids]
    return {"wrk": result, "user_us": user, "system_us": system, "rss_mb": rss_mb}


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def classify(frames: list[str]) -> str | None:
    """The layer of one sample (innermost frame last), or None for a thread waiting on a lock."""
    # The frames outside the event loop (the CLI, runtime/serve.py) are under every sample: drop them.
    for i in range(len(frames) - 1, -1, -1):
        if any(entry in frames[i] for entry in LOOP_ENTRY):
            frames = frames[i + 1 :]
            break
    if not frames:
        return LOOP
    tail = frames[-3:]
    if any(w in f for f in tail for w in WAITS):
        return None
    if any("gc_collect" in f for f in frames):
        return GC
    if SYSCALL.match(frames[-1]) and "libc" in frames[-1]:
        return KERNEL
    if any("BatchWriter._run" in f for f in frames):
        return WRITER
    for frame in reversed(frames):
        for name, paths in LAYERS:
            if any(p in frame for p in paths):
                return name
    return LOOP


def profile(pids: list[int], seconds: int, rate: int, root: Path) -> list[tuple[Counter[str], Counter[str]]]:
    """Start py-spy on every pid, let it sample `seconds`, and return each node's samples per layer and
    per function (the innermost of ours)."""
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    procs, outs = [], []
    for pid in pids:
        out = root / f"profile-{pid}-{time.monotonic_ns()}.txt"
        outs.append(out)
        procs.append(
            subprocess.Popen(
                [
                    pyspy,
                    "record",
                    "--native",
                    "--rate",
                    str(rate),
                    "--duration",
                    str(seconds),
                    "--format",
                    "raw",
                    "--threads",
                    "-o",
                    str(out),
                    "--pid",
                    str(pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return [_collect(proc, out, seconds) for proc, out in zip(procs, outs, strict=True)]


def _started(raw: Path) -> int:
    """The order a profile was started in (py-spy's output names end with a monotonic clock)."""
    return int(raw.stem.rpartition("-")[2])


def _collect(proc: subprocess.Popen[bytes], out: Path, seconds: int) -> tuple[Counter[str], Counter[str]]:
    try:
        proc.wait(timeout=seconds + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    layers: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        layer = classify(frames)
        if layer is not None:
            layers[layer] += int(count)
            # The innermost frame of our own code (or the innermost at all), without its line number.
            own = next((f for f in reversed(frames) if "dynastore/" in f), frames[-1])
            functions[re.sub(r":\d+\)$", ")", own)] += int(count)
    return layers, functions


def table(
    kind: str, measured: dict[str, object], profiled: list[tuple[Counter[str], Counter[str]]] | None, top: int
) -> tuple[str, dict[str, object]]:
    samples = None if profiled is None else [layers for layers, _ in profiled]
    user: list[float] = measured["user_us"]  # type: ignore[assignment]
    system: list[float] = measured["system_us"]  # type: ignore[assignment]
    rows: dict[str, list[float]] = {}
    for layer in ORDER:
        per_node = []
        for i in range(len(user)):
            if samples is None:
                # Without a profile the user time stays in one row, the system time in another.
                per_node.append(user[i] if layer == LOOP else system[i] if layer == KERNEL else 0.0)
                continue
            counts = samples[i]
            if layer == KERNEL:
                per_node.append(system[i])
                continue
            in_user = sum(n for name, n in counts.items() if name != KERNEL)
            per_node.append(user[i] * counts[layer] / in_user if in_user else 0.0)
        rows[layer] = per_node
    total = sum(user) + sum(system)
    wrk: dict[str, float] = measured["wrk"]  # type: ignore[assignment]
    lines = [
        f"**{kind.upper()}** — {wrk['ops_s']:,.0f} ops/s, p50 {wrk['p50_ms']:.1f} / p99 {wrk['p99_ms']:.1f} / "
        f"p99.9 {wrk['p999_ms']:.1f} ms, {wrk['non_2xx']} non-2xx; CPU per operation {total:,.0f} µs",
        "",
        "| layer | node0 (coordinator) | node1 | node2 | all nodes | share |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for layer, per_node in rows.items():
        if samples is None and layer not in (LOOP, KERNEL):
            continue
        if samples is None:
            layer = "user time (not split without a profile)" if layer == LOOP else "system time"
        cells = " | ".join(f"{v:,.0f}" for v in per_node)
        lines.append(f"| {layer} | {cells} | {sum(per_node):,.0f} | {100 * sum(per_node) / total:.0f}% |")
    all_nodes = [u + s for u, s in zip(user, system, strict=True)]
    lines.append(f"| **all** | {' | '.join(f'{v:,.0f}' for v in all_nodes)} | {total:,.0f} | 100% |")
    functions: Counter[str] = Counter()
    if profiled is not None and top > 0:
        # Each node's samples weighted by its CPU per operation: the functions of the whole cluster.
        for i, (layers, per_function) in enumerate(profiled):
            weight = (user[i] + system[i]) / max(1, sum(layers.values()))
            for name, n in per_function.items():
                functions[name] += n * weight
        lines += [
            "",
            f"The {top} functions (of ours, innermost, with the system calls made from them) with the most CPU,"
            " all nodes, µs per operation:",
            "",
        ]
        lines += [f"- {us:,.1f} µs ({100 * us / total:.1f}%) {name}" for name, us in functions.most_common(top)]
    return "\n".join(lines), {
        "kind": kind,
        "wrk": wrk,
        "rss_mb": measured["rss_mb"],
        "cpu_us_per_op": total,
        "user_us": user,
        "system_us": system,
        "us_per_op": rows,
        "samples": [dict(s) for s in samples or []],
        "functions_us": dict(functions.most_common(100)),
    }


def etcd_side_by_side(root: Path, seconds: int, figures: list[dict[str, object]], spread: bool) -> str:
    """The same loads against a 3-node etcd (started as `dynastore bench ycsb` starts it), right after
    dynastore's runs: a table of both, with each side's CPU per operation."""
    from dynastore.bench.ycsb_peers import ETCD, running

    put_lua, get_lua = root / "etcd-put.lua", root / "etcd-get.lua"
    put_lua.write_text(ETCD_PUT_LUA)
    get_lua.write_text(ETCD_GET_LUA)
    rows = [
        "| | dynastore ops/s (p99 ms, CPU µs/op) | etcd ops/s (p99 ms, CPU µs/op) | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    with running(ETCD, root / "etcd") as peer:
        url, pids = peer.endpoint.addresses[0], list(peer.server_pids)
        members = tuple(a.rpartition("/")[2] for a in peer.endpoint.addresses) if spread else ()
        written = run_wrk(url, put_lua, WARMUP_S, "w", spread=members)["wrote"]
        for kind in ("put", "get"):
            wrk_args = (f"m{time.monotonic_ns()}-",) if kind == "put" else ("w", written)
            script = put_lua if kind == "put" else get_lua
            theirs = measured_run(url, script, seconds, pids, *wrk_args, spread=members)
            ours = next(f for f in figures if f["kind"] == kind)
            mine: dict[str, float] = ours["wrk"]  # type: ignore[assignment]
            other: dict[str, float] = theirs["wrk"]  # type: ignore[assignment]
            etcd_cpu = sum(theirs["user_us"]) + sum(theirs["system_us"])  # type: ignore[call-overload]
            figures.append({"kind": f"etcd-{kind}", "wrk": other, "cpu_us_per_op": etcd_cpu})
            rows.append(
                f"| {kind.upper()} | {mine['ops_s']:,.0f} ({mine['p99_ms']:.0f}, {ours['cpu_us_per_op']:,.0f}) | "
                f"{other['ops_s']:,.0f} ({other['p99_ms']:.0f}, {etcd_cpu:,.0f}) | "
                f"{mine['ops_s'] / other['ops_s']:.2f} |"
            )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--rate", type=int, default=149, help="py-spy samples per second per process")
    parser.add_argument("--kinds", default="put,get")
    parser.add_argument("--top", type=int, default=15, help="list this many functions by CPU")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--no-profile", action="store_true", help="only the CPU per operation (no py-spy run)")
    parser.add_argument(
        "--spread", action="store_true", help="one wrk thread per node, each to its own (else all to node0)"
    )
    parser.add_argument("--etcd", action="store_true", help="then the same loads against a 3-node etcd")
    parser.add_argument("--keep", type=Path, help="copy py-spy's raw stacks (one file per node and kind) here")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian package wrk)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="profile-saturation-") as tmp:
        root = Path(tmp)
        put_lua, get_lua = root / "put.lua", root / "get.lua"
        put_lua.write_text(PUT_LUA)
        get_lua.write_text(GET_LUA)
        cluster = LocalCluster(root / "cluster", 3, overrides=tuple(args.overrides))
        try:
            cluster.start()
            cluster.wait_ready(60)
            pids = [node.proc.pid for node in cluster.nodes if node.proc is not None]
            url = cluster[0].url
            # The warm-up's keys are the ones the GET runs read.
            spread = tuple(f"{node.host}:{node.http_port}" for node in cluster.nodes) if args.spread else ()
            written = run_wrk(url, put_lua, WARMUP_S, "w", spread=spread)["wrote"]
            out, figures = [], []
            for kind in args.kinds.split(","):
                script = put_lua if kind == "put" else get_lua
                wrk_args = (f"m{time.monotonic_ns()}-",) if kind == "put" else ("w", written)
                measured = measured_run(url, script, args.seconds, pids, *wrk_args, spread=spread)
                samples = None
                if not args.no_profile:
                    spy_root = root / "spy"
                    spy_root.mkdir(exist_ok=True)
                    with concurrent.futures.ThreadPoolExecutor(1) as pool:
                        pending = pool.submit(profile, pids, args.seconds, args.rate, spy_root)
                        wrk_args = (f"p{time.monotonic_ns()}-",) if kind == "put" else wrk_args
                        run_wrk(url, script, args.seconds + 1, *wrk_args, spread=spread)
                        samples = pending.result()
                    if args.keep is not None:
                        args.keep.mkdir(parents=True, exist_ok=True)
                        for i, raw in enumerate(sorted(spy_root.glob("profile-*.txt"), key=_started)):
                            shutil.move(raw, args.keep / f"{kind}-node{i}.txt")
                text, data = table(kind, measured, samples, args.top)
                out.append(text)
                figures.append(data)
            if args.etcd:
                out.append(etcd_side_by_side(root, args.seconds, figures, args.spread))
            print("\n\n".join(out))
            if args.json is not None:
                args.json.write_text(json.dumps(figures, indent=2))
        finally:
            cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
