"""How cost grows with data: a 3-node cluster loaded to each of several sizes, measured at each.

    dynastore bench scale [--sizes 1000000,5000000] [--out bench-results] [--data-dir DIR] [--keep]

For each size, in increasing order (the cluster is loaded once, each size adding keys to the last):

- load: PUTs of new 1 KB values (w=2, durable, the defaults) through the HTTP API by `wrk`, one
  per node (1 thread each, --load-connections connections over all three), whose Lua script walks
  the key space in order (node i takes every third key from the i-th); the
  load rate is the keys written over the wall time; every PUT's answer is counted, and each node's
  `keys_stored` must then equal the keys loaded (every node holds every key at N=3 on 3 nodes);
- throughput and p99 of GET and of PUT (overwrites) of random keys over the loaded key space
  (`wrk` 1 thread, 50 connections, 10 s), to node0;
- resident memory (VmRSS from /proc) of each node, and disk bytes per key (the blocks of each
  node's data directory, as `du` counts them, over the keys it holds);
- start-up after a clean stop (SIGTERM to every node, then all started again): the time until every
  node's `/ready` says ready, and until every node has rebuilt its anti-entropy trees from the
  on-disk segment index (`aae_trees_ready` back to what it was);
- start-up after `kill -9` of every node: the time until every node is ready, and until each has
  verified every partition's segment index against its data (`aae_index_verifications_total` reaches
  the ring size), which is a full anti-entropy rebuild from the data, as the periodic
  `anti_entropy_rebuild_interval_ms` one is.

The bucket has allow_mult=false so that blind overwrites replace a value rather than pile up
siblings. The report gives, for every figure and each pair of successive sizes, its growth exponent
(log of the figure's ratio over log of the keys' ratio): 1 grows like the data, 0 not at all, more
than 1 faster than the data. Writes scale.json and scale.md into --out. The data directory (a new
one under --data-dir) is deleted at the end unless --keep; the disk it needs is checked first.

This module runs wrk and parses its output itself (a small, self-contained helper).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import itertools
import json
import math
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dynastore.localcluster import ClusterError, LocalCluster, NodeProc, http_json

NODES = 3
BUCKET = "scale"
VALUE_BYTES = 1024
# Disk a key takes over the whole cluster, assumed before anything is measured (3 replicas of a
# 1 KB value, its LMDB page share, the anti-entropy index entry, with room to spare).
DISK_BYTES_PER_KEY_ASSUMED = 3 * 3 * 1024
# Memory the cluster needs is not checked: it is measured (and reported per key).
SIZES_MAX = 50_000_000
WRK_TIMEOUT_S = 10
WRK_OUTPUT_BYTES_MAX = 1024 * 1024
# A load that writes fewer keys per second than this is cut off (the wrk run's bound).
LOAD_RATE_MIN = 100
# How long each start-up and each anti-entropy rebuild may take at most, per million keys, plus a floor.
STARTUP_S_PER_MILLION = 600.0
STARTUP_S_MIN = 120.0
POLL_S = 0.05
# How long after a load the third copies of its keys are waited for.
CONVERGE_S = 60.0


class ScaleError(Exception):
    """The measurement could not be made (wrk missing, a load incomplete, a node that never came up)."""


# --- wrk -------------------------------------------------------------------------------------------------------------

_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


@dataclass(frozen=True)
class WrkResult:
    requests: int
    duration_s: float
    requests_per_s: float
    # Latency percentiles (from --latency), in milliseconds.
    p50_ms: float
    p99_ms: float
    # Socket errors by kind, and answers that were neither 2xx nor 3xx.
    errors: dict[str, int]
    non_2xx: int
    # What the Lua script's done() printed, as key=value pairs (the load script's counts).
    script: dict[str, int] = field(default_factory=dict)


def _duration_s(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_S[match.group(2)]


def parse_wrk(text: str) -> WrkResult:
    """The figures of one `wrk --latency` run from its output; ValueError when a figure is missing."""
    done = re.search(r"^\s*(\d+) requests in ([0-9.]+(?:us|ms|s|m|h)),", text, re.M)
    rate = re.search(r"^Requests/sec:\s*([0-9.]+)", text, re.M)
    p50 = re.search(r"^\s*50%\s+([0-9.]+(?:us|ms|s|m|h))\s*$", text, re.M)
    p99 = re.search(r"^\s*99%\s+([0-9.]+(?:us|ms|s|m|h))\s*$", text, re.M)
    if done is None or rate is None:
        raise ValueError("wrk printed no request count or rate:\n" + text[-2000:])
    if p50 is None or p99 is None:
        raise ValueError("wrk printed no latency distribution (was --latency given?):\n" + text[-2000:])
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if socket is not None:
        errors = dict(zip(errors, (int(g) for g in socket.groups()), strict=True))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    script = {m.group(1): int(m.group(2)) for m in re.finditer(r"\bscale-(\w+)=(\d+)\b", text)}
    return WrkResult(
        requests=int(done.group(1)),
        duration_s=_duration_s(done.group(2)),
        requests_per_s=float(rate.group(1)),
        p50_ms=_duration_s(p50.group(1)) * 1e3,
        p99_ms=_duration_s(p99.group(1)) * 1e3,
        errors=errors,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        script=script,
    )


# Keys are k000000000, k000000001, ...: the same in every script, so reads find what the load wrote.
_LUA_COMMON = f"""
local value = string.rep("v", {VALUE_BYTES})
local put_headers = {{["Content-Type"] = "application/octet-stream"}}
local function path(i)
  return string.format("/buckets/{BUCKET}/keys/k%09d", i)
end
local threads = {{}}
function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end
"""

# The load (arguments: first key, end, stride): thread t writes keys first+t-1, first+t-1+stride, ...
# below the end, each once, in order (stride = threads for one wrk; more when several share a range). A
# PUT is answered 204 (anything else but 200, which only /ping answers, counts as failed); once all of
# a thread's PUTs are answered it stops. Requests asked for after its last PUT are pings (wrk keeps
# every connection busy), whose 200 is not counted. The first request asked for is a ping too: wrk
# asks the first thread for one request before it starts, to check it, and never sends it (that took
# a key from the load).
LOAD_LUA = (
    _LUA_COMMON
    + """
local next_key, last, stride, expected
local first_call = true
local finished = false
ok, failed = 0, 0
function init(args)
  local first, threads_count = tonumber(args[1]), tonumber(args[3])
  last = tonumber(args[2])
  next_key = first + tid - 1
  stride = threads_count
  expected = 0
  if next_key < last then expected = math.floor((last - 1 - next_key) / stride) + 1 end
end
function request()
  if first_call then
    first_call = false
    return wrk.format("GET", "/ping")
  end
  if next_key < last then
    local i = next_key
    next_key = next_key + stride
    return wrk.format("PUT", path(i) .. "?w=2", put_headers, value)
  end
  return wrk.format("GET", "/ping")
end
function response(status, headers, body)
  if status == 204 then ok = ok + 1 elseif status ~= 200 then failed = failed + 1 end
  if ok + failed >= expected and not finished then
    -- wrk's main thread sleeps out its whole duration even when every thread has stopped: this line
    -- tells run_wrk to interrupt it (SIGINT), so the load ends when its last PUT is answered.
    finished = true
    io.write("scale-thread-finished\\n")
    io.flush()
    wrk.thread:stop()
  end
end
function done(summary, latency, requests)
  local total_ok, total_failed = 0, 0
  for _, t in ipairs(threads) do
    total_ok = total_ok + t:get("ok")
    total_failed = total_failed + t:get("failed")
  end
  io.write(string.format("scale-ok=%d scale-failed=%d\\n", total_ok, total_failed))
end
"""
)

# Random keys over [0, n): reads, or overwrites of the same 1 KB value size.
RANDOM_LUA = (
    _LUA_COMMON
    + """
local n, method
function init(args)
  n, method = tonumber(args[1]), args[2]
  math.randomseed(7919 * tid + n)
end
function request()
  local i = math.random(0, n - 1)
  if method == "PUT" then return wrk.format("PUT", path(i) .. "?w=2", put_headers, value) end
  return wrk.format("GET", path(i))
end
"""
)


FINISHED_MARK = b"scale-thread-finished\n"


def run_wrk(
    url: str, script: Path, args: list[str], *, connections: int, duration_s: float, threads: int = 1
) -> WrkResult:
    """Run wrk for `duration_s` at most; when the script says every thread has finished (the load
    script does, once its keys are written), interrupt it then rather than at the end of its duration."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise ScaleError("wrk is not installed (apt-get install wrk, or scripts/install-bench-deps.sh)")
    cmd = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, math.ceil(duration_s))}s",
        f"--timeout={WRK_TIMEOUT_S}s",
        "--latency",
        "-s",
        str(script),
        url,
        "--",
        *args,
    ]
    deadline = time.monotonic() + duration_s + 60
    output = bytearray()
    interrupted = False
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as proc:
        assert proc.stdout is not None
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ScaleError(f"wrk did not finish within {duration_s + 60:.0f} s: {' '.join(cmd)}")
                readable, _, _ = select.select([proc.stdout], [], [], min(remaining, 1.0))
                if not readable:
                    continue
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                # wrk's output is a few kilobytes; a script that prints without end is cut off.
                if len(output) + len(chunk) > WRK_OUTPUT_BYTES_MAX:
                    raise ScaleError(f"wrk printed more than {WRK_OUTPUT_BYTES_MAX} bytes: {' '.join(cmd)}")
                output += chunk
                if not interrupted and output.count(FINISHED_MARK) >= threads:
                    proc.send_signal(signal.SIGINT)
                    interrupted = True
            returncode = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    text = output.decode(errors="replace")
    if returncode != 0:
        raise ScaleError(f"wrk failed ({returncode}): {text[-500:]}")
    return parse_wrk(text)


# --- The cluster's figures -----------------------------------------------------------------------------------------


def rss_bytes(pid: int, name: str = "VmRSS") -> int:
    """A process's resident memory from /proc, in bytes: all of it (VmRSS), or its anonymous part
    (RssAnon: the heap, without the pages of LMDB's memory-mapped file, which VmRSS counts)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) * 1024
    raise ScaleError(f"/proc/{pid}/status has no {name}")


def disk_bytes(path: Path) -> int:
    """The bytes the files under `path` occupy on disk (allocated blocks, as `du` counts them)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def disk_needed_bytes(size_max: int) -> int:
    return size_max * DISK_BYTES_PER_KEY_ASSUMED


def _ready(node: NodeProc, reasons: dict[str, str] | None = None) -> bool:
    """Whether the node's /ready says ready; the reason it gave otherwise goes in `reasons`."""
    try:
        return bool(http_json(node.url + "/ready", timeout_s=30.0).get("ready"))
    except urllib.error.HTTPError as exc:
        if reasons is not None:
            with contextlib.suppress(OSError, ValueError, AttributeError):
                reasons[node.name] = str(json.loads(exc.read()).get("reason", ""))
        return False
    except (OSError, urllib.error.URLError, ValueError) as exc:
        if reasons is not None:
            cause = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            refused = isinstance(cause, ConnectionRefusedError)
            reasons[node.name] = "not listening yet" if refused else f"no answer ({cause})"
        return False


def _stats(node: NodeProc) -> dict[str, Any]:
    stats: dict[str, Any] = http_json(node.url + "/stats", timeout_s=60.0)
    return stats


def _wait_each(
    nodes: list[NodeProc], condition: Any, timeout_s: float, what: str, started: float
) -> tuple[float, float]:
    """Seconds from `started` until `condition(node)` held for every node (polled in turn), and the
    longest one poll took (a node busy in one long step answers nothing meanwhile)."""
    deadline = time.monotonic() + timeout_s
    pending = list(nodes)
    longest_s = 0.0
    while pending:
        for node in list(pending):
            if not node.alive:
                raise ScaleError(f"{node.name} exited while waiting for {what}:\n{node.log_tail()}")
            asked = time.monotonic()
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError, KeyError):
                if condition(node):
                    pending.remove(node)
            longest_s = max(longest_s, time.monotonic() - asked)
        if pending:
            if time.monotonic() > deadline:
                names = ", ".join(n.name for n in pending)
                raise ScaleError(f"timed out after {timeout_s:.0f} s waiting for {what} on {names}")
            time.sleep(POLL_S)
    return time.monotonic() - started, longest_s


@dataclass
class Restart:
    # Seconds from the first node's start until every node is ready; until its trees are ready
    # (clean) or its segment index is verified against the data (after kill -9).
    ready_s: float
    trees_s: float
    # How long the stop itself took (SIGTERM until every process exited; 0 for kill -9).
    stop_s: float
    # The longest a node took to answer /ready or /stats from its start until its trees were built or
    # its index verified (a node busy in one long step answers nothing meanwhile).
    longest_answer_s: float = 0.0
    # What /ready said last, per node, before it said ready (empty: ready at its first answer).
    not_ready_reasons: dict[str, str] = field(default_factory=dict)


@dataclass
class SizeResult:
    keys: int
    load_keys: int
    load_s: float
    load_keys_per_s: float
    load_failed: int
    # Each node's keys at the end of the load, and the seconds until every node held every key
    # (None: not within CONVERGE_S).
    keys_stored: list[int]
    converged_s: float | None
    get: WrkResult
    put: WrkResult
    rss_bytes: list[int]
    rss_anon_bytes: list[int]
    disk_bytes: list[int]
    clean: Restart
    killed: Restart
    # The anonymous part (RssAnon) after the full rebuild (the kill -9 start-up, every index verified).
    rss_after_rebuild_bytes: list[int]

    @property
    def disk_bytes_per_key(self) -> float:
        return sum(self.disk_bytes) / max(1, sum(self.keys_stored))

    @property
    def rss_bytes_per_key(self) -> float:
        return sum(self.rss_bytes) / max(1, self.keys)


def _pids(cluster: LocalCluster) -> list[int]:
    pids = [node.proc.pid for node in cluster.nodes if node.proc is not None and node.alive]
    if len(pids) != len(cluster.nodes):
        raise ScaleError("a node of the cluster is not running")
    return pids


def _bucket_props(cluster: LocalCluster) -> None:
    body = json.dumps({"props": {"allow_mult": False}}).encode()
    request = urllib.request.Request(
        f"{cluster[0].url}/buckets/{BUCKET}/props",
        method="PUT",
        data=body,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10.0) as resp:
        if resp.status != 204:
            raise ScaleError(f"setting the bucket's props answered HTTP {resp.status}")
    # The props travel by gossip: wait until every node has them, so no write makes a sibling.
    for node in cluster.nodes:
        url = f"{node.url}/buckets/{BUCKET}/props"

        def learned(url: str = url) -> bool:
            return http_json(url)["props"]["allow_mult"] is False

        cluster.wait(learned, 30, f"{node.name} to learn the bucket's props")


def _load(cluster: LocalCluster, scripts: Path, first: int, last: int, connections: int) -> tuple[float, int]:
    """Write keys first..last-1 once each: one wrk per node, node i writing the keys first+i, first+i+3,
    ... (clients spread over the coordinators, as a real load is), `connections` over them all."""
    count = last - first
    bound_s = count / LOAD_RATE_MIN + 30
    nodes = cluster.nodes
    each = max(1, connections // len(nodes))
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(nodes)) as pool:
        runs = [
            pool.submit(
                run_wrk,
                node.url,
                scripts / "load.lua",
                [str(first + i), str(last), str(len(nodes))],
                connections=each,
                duration_s=bound_s,
            )
            for i, node in enumerate(nodes)
        ]
        results = [run.result() for run in runs]
    elapsed = time.monotonic() - started
    ok = sum(r.script.get("ok", 0) for r in results)
    failed = sum(r.script.get("failed", 0) for r in results)
    if ok + failed < count:
        errors = [r.errors for r in results]
        raise ScaleError(
            f"the load of keys {first}..{last - 1} answered {ok + failed} of {count} PUTs within "
            f"{bound_s:.0f} s (socket errors {errors})"
        )
    return elapsed, failed


def _converge(cluster: LocalCluster, size: int) -> float | None:
    """Seconds until every node holds `size` keys, polled up to CONVERGE_S; None if they do not."""
    started = time.monotonic()
    while True:
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError, KeyError):
            if all(int(_stats(node)["keys_stored"]) >= size for node in cluster.nodes):
                return round(time.monotonic() - started, 1)
        if time.monotonic() - started > CONVERGE_S:
            return None
        time.sleep(1.0)


def _restart(cluster: LocalCluster, keys: int, *, kill: bool) -> Restart:
    nodes = cluster.nodes
    trees_before = {node.name: int(_stats(node)["aae_trees_ready"]) for node in nodes}
    partitions = int(_stats(nodes[0])["ring_num_partitions"])
    stopped = time.monotonic()
    if kill:
        for node in nodes:
            node.kill()
    else:
        for node in nodes:
            node.signal(15)
        for node in nodes:
            node.stop(timeout_s=300)
    stop_s = 0.0 if kill else time.monotonic() - stopped
    bound_s = STARTUP_S_MIN + STARTUP_S_PER_MILLION * keys / 1e6
    started = time.monotonic()
    cluster.start()
    reasons: dict[str, str] = {}
    ready_s, longest_ready_s = _wait_each(nodes, lambda n: _ready(n, reasons), bound_s, "/ready", started)
    if kill:
        # A start after an unclean stop verifies every partition's index against the data.
        trees_s, longest_s = _wait_each(
            nodes,
            lambda n: int(_stats(n)["aae_index_verifications_total"]) >= partitions,
            bound_s,
            "the anti-entropy index verification",
            started,
        )
    else:
        trees_s, longest_s = _wait_each(
            nodes,
            lambda n: int(_stats(n)["aae_trees_ready"]) >= trees_before[n.name],
            bound_s,
            "the anti-entropy trees",
            started,
        )
    longest_s = max(longest_s, longest_ready_s)
    return Restart(round(ready_s, 2), round(trees_s, 2), round(stop_s, 2), round(longest_s, 3), reasons)


def measure(
    root: Path,
    sizes: list[int],
    *,
    duration_s: float,
    connections: int,
    load_connections: int,
    overrides: tuple[str, ...] = (),
    log: Any = print,
    on_size: Any = None,
) -> list[SizeResult]:
    """Load and measure each size in turn; `on_size(results)` is called after each (so a long run that
    fails later still leaves the sizes it measured)."""
    scripts = root / "scripts"
    scripts.mkdir(parents=True, exist_ok=True)
    (scripts / "load.lua").write_text(LOAD_LUA)
    (scripts / "random.lua").write_text(RANDOM_LUA)
    results: list[SizeResult] = []
    cluster = LocalCluster(root / "cluster", NODES, overrides=overrides)
    try:
        cluster.start()
        cluster.wait_ready(120)
        _bucket_props(cluster)
        loaded = 0
        for size in sizes:
            log(f"scale: loading keys {loaded}..{size - 1}")
            load_s, failed = _load(cluster, scripts, loaded, size, load_connections)
            load_keys = size - loaded
            loaded = size
            stored = [int(_stats(node)["keys_stored"]) for node in cluster.nodes]
            log(f"scale: {load_keys} keys in {load_s:.1f} s ({load_keys / load_s:.0f}/s), stored {stored}")
            # Every acknowledged PUT is on W=2 nodes at least; fewer copies would be lost writes.
            if sum(stored) < 2 * (size - failed):
                raise ScaleError(f"after loading {size} keys ({failed} PUTs failed) the nodes hold {stored}")
            # The third copy of a key may still be on its way (or dropped by an overloaded replica:
            # then anti-entropy brings it): how long until every node holds every key, up to a bound.
            converged_s = _converge(cluster, size)
            log(f"scale: every node holds every key {converged_s} s after the load (None: not yet)")
            get = run_wrk(
                cluster[0].url,
                scripts / "random.lua",
                [str(size), "GET"],
                connections=connections,
                duration_s=duration_s,
            )
            put = run_wrk(
                cluster[0].url,
                scripts / "random.lua",
                [str(size), "PUT"],
                connections=connections,
                duration_s=duration_s,
            )
            log(f"scale: GET {get.requests_per_s:.0f}/s p99 {get.p99_ms:.1f} ms; PUT {put.requests_per_s:.0f}/s")
            rss = [rss_bytes(pid) for pid in _pids(cluster)]
            anon = [rss_bytes(pid, "RssAnon") for pid in _pids(cluster)]
            disk = [disk_bytes(node.data_dir) for node in cluster.nodes]
            clean = _restart(cluster, size, kill=False)
            log(f"scale: clean restart ready in {clean.ready_s} s, trees in {clean.trees_s} s")
            killed = _restart(cluster, size, kill=True)
            log(f"scale: kill -9 restart ready in {killed.ready_s} s, index verified in {killed.trees_s} s")
            results.append(
                SizeResult(
                    keys=size,
                    load_keys=load_keys,
                    load_s=round(load_s, 2),
                    load_keys_per_s=round(load_keys / load_s, 1),
                    load_failed=failed,
                    keys_stored=stored,
                    converged_s=converged_s,
                    get=get,
                    put=put,
                    rss_bytes=rss,
                    rss_anon_bytes=anon,
                    disk_bytes=disk,
                    clean=clean,
                    killed=killed,
                    rss_after_rebuild_bytes=[rss_bytes(pid, "RssAnon") for pid in _pids(cluster)],
                )
            )
            if on_size is not None:
                on_size(results)
    except ClusterError as exc:
        raise ScaleError(str(exc)) from exc
    finally:
        cluster.close()
    return results


# --- The report -------------------------------------------------------------------------------------------------------


def growth_exponent(keys_a: int, value_a: float, keys_b: int, value_b: float) -> float | None:
    """How a figure grows between two sizes: log(value ratio) / log(keys ratio); 1 is like the data.
    None when it cannot be told (a figure of zero, or equal sizes)."""
    if keys_a <= 0 or keys_b <= 0 or keys_a == keys_b or value_a <= 0 or value_b <= 0:
        return None
    return math.log(value_b / value_a) / math.log(keys_b / keys_a)


# name, unit, how to read it from a SizeResult
FIGURES: list[tuple[str, str, Any]] = [
    ("load rate", "keys/s", lambda r: r.load_keys_per_s),
    ("GET throughput", "req/s", lambda r: r.get.requests_per_s),
    ("GET p99", "ms", lambda r: r.get.p99_ms),
    ("PUT throughput", "req/s", lambda r: r.put.requests_per_s),
    ("PUT p99", "ms", lambda r: r.put.p99_ms),
    ("RSS (VmRSS, with LMDB's mapped pages), 3 nodes", "MiB", lambda r: sum(r.rss_bytes) / 2**20),
    ("heap (RssAnon), 3 nodes", "MiB", lambda r: sum(r.rss_anon_bytes) / 2**20),
    ("heap after a full AAE rebuild, 3 nodes", "MiB", lambda r: sum(r.rss_after_rebuild_bytes) / 2**20),
    ("disk, 3 nodes", "MiB", lambda r: sum(r.disk_bytes) / 2**20),
    ("disk per stored key", "bytes", lambda r: r.disk_bytes_per_key),
    ("clean stop", "s", lambda r: r.clean.stop_s),
    ("clean start: all ready", "s", lambda r: r.clean.ready_s),
    ("clean start: AAE trees built from the index", "s", lambda r: r.clean.trees_s),
    ("kill -9 start: all ready", "s", lambda r: r.killed.ready_s),
    ("kill -9 start: full AAE rebuild from the data", "s", lambda r: r.killed.trees_s),
    ("kill -9 start: longest answer to /ready or /stats", "s", lambda r: r.killed.longest_answer_s),
]


def result_json(results: list[SizeResult], meta: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for r in results:
        row = asdict(r)
        row["disk_bytes_per_key"] = round(r.disk_bytes_per_key, 1)
        row["rss_bytes_per_key"] = round(r.rss_bytes_per_key, 1)
        rows.append(row)
    growth = []
    for a, b in itertools.pairwise(results):
        for name, unit, get in FIGURES:
            exponent = growth_exponent(a.keys, float(get(a)), b.keys, float(get(b)))
            growth.append({"figure": name, "unit": unit, "from_keys": a.keys, "to_keys": b.keys, "exponent": exponent})
    return {**meta, "sizes": rows, "growth": growth}


def _cell(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def format_markdown(results: list[SizeResult], meta: dict[str, Any]) -> str:
    sizes = [r.keys for r in results]
    head = "| | unit | " + " | ".join(f"{k:,} keys" for k in sizes) + " |"
    pairs = list(itertools.pairwise(results))
    if pairs:
        head += " " + " | ".join(f"growth {a.keys:,}→{b.keys:,}" for a, b in pairs) + " |"
    lines = [
        f"3-node cluster, {VALUE_BYTES}-byte values, N=3 W=2 durable; wrk 1 thread, "
        f"{meta['connections']} connections, {meta['duration_s']:g} s, random keys over the loaded key space, "
        f"all to node0 (the load: one wrk per node, {meta['load_connections']} connections in all, keys in order).",
        "",
        head,
        "| --- | --- |" + " ---: |" * (len(sizes) + len(pairs)),
    ]
    for name, unit, get in FIGURES:
        cells = [_cell(float(get(r))) for r in results]
        growths = []
        for a, b in pairs:
            exponent = growth_exponent(a.keys, float(get(a)), b.keys, float(get(b)))
            growths.append("-" if exponent is None else f"{exponent:+.2f}")
        lines.append(f"| {name} | {unit} | " + " | ".join(cells + growths) + " |")
    lines += [
        "",
        "Growth is log(figure ratio) / log(keys ratio): 1 grows like the data, 0 stays flat, "
        "above 1 grows faster than the data.",
        "",
        "| keys | load failed | keys per node after the load | all copies after | "
        "GET errors / non-2xx | PUT errors / non-2xx |",
        "| ---: | ---: | --- | ---: | --- | --- |",
    ]
    for r in results:
        converged = f"{r.converged_s:g} s" if r.converged_s is not None else f"> {CONVERGE_S:g} s"
        lines.append(
            f"| {r.keys:,} | {r.load_failed} | {', '.join(f'{k:,}' for k in r.keys_stored)} | {converged} | "
            f"{sum(r.get.errors.values())} / {r.get.non_2xx} | {sum(r.put.errors.values())} / {r.put.non_2xx} |"
        )
    said = [
        f"- {r.keys:,} keys, {kind}: "
        + "; ".join(f"{name}: {why}" for name, why in sorted(restart.not_ready_reasons.items()))
        for r in results
        for kind, restart in (("clean start", r.clean), ("kill -9 start", r.killed))
        if restart.not_ready_reasons
    ]
    if said:
        lines += ["", "What /ready said last before each node was ready:", "", *said]
    return "\n".join(lines) + "\n"


# --- Command ----------------------------------------------------------------------------------------------------------


def parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--sizes must be whole numbers separated by commas, not {text!r}") from None
    if not sizes:
        raise argparse.ArgumentTypeError("--sizes needs at least one size")
    if any(not 1 <= s <= SIZES_MAX for s in sizes):
        raise argparse.ArgumentTypeError(f"every size must be from 1 to {SIZES_MAX:,}")
    if sizes != sorted(set(sizes)):
        raise argparse.ArgumentTypeError("--sizes must increase (each adds keys to the last)")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dynastore bench scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=parse_sizes, default=[1_000_000, 5_000_000], help="keys, e.g. 1000000,5000000")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="writes scale.json and scale.md here")
    parser.add_argument(
        "--data-dir", type=Path, default=Path("bench-data"), help="the cluster's data goes in a new directory here"
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directory afterwards")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of each GET and PUT run (default 10)")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections for GET and PUT (default 50)")
    parser.add_argument(
        "--load-connections", type=int, default=96, help="wrk connections for the load, over all nodes (default 96)"
    )
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="a node setting, name=value")
    args = parser.parse_args(argv)
    if not 1 <= args.duration <= 600:
        parser.error("--duration must be from 1 to 600 seconds")
    for name in ("connections", "load_connections"):
        if not 1 <= getattr(args, name) <= 1000:
            parser.error(f"--{name.replace('_', '-')} must be from 1 to 1000")
    if shutil.which("wrk") is None:
        parser.error("wrk is not installed (apt-get install wrk, or scripts/install-bench-deps.sh)")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    needed = disk_needed_bytes(max(args.sizes))
    free = shutil.disk_usage(args.data_dir).free
    if free < needed:
        parser.error(
            f"{args.data_dir} has {free / 1e9:.1f} GB free; {max(args.sizes):,} keys need about "
            f"{needed / 1e9:.1f} GB (choose another --data-dir or smaller --sizes)"
        )
    root = Path(tempfile.mkdtemp(prefix="dynastore-scale-", dir=args.data_dir)).resolve()
    print(f"scale: data in {root} ({'kept' if args.keep else 'deleted afterwards'})", flush=True)
    started = time.monotonic()
    meta = {
        "nodes": NODES,
        "value_bytes": VALUE_BYTES,
        "duration_s": args.duration,
        "connections": args.connections,
        "load_connections": args.load_connections,
        "overrides": args.overrides,
        "cpus": os.cpu_count(),
    }

    def write(results: list[SizeResult]) -> None:
        meta["wall_s"] = round(time.monotonic() - started, 1)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scale.json").write_text(json.dumps(result_json(results, meta), indent=2) + "\n")
        (args.out / "scale.md").write_text(format_markdown(results, meta))

    try:
        results = measure(
            root,
            args.sizes,
            duration_s=args.duration,
            connections=args.connections,
            load_connections=args.load_connections,
            overrides=tuple(args.overrides),
            log=lambda line: print(line, flush=True),
            on_size=write,
        )
    except ScaleError as exc:
        print(f"dynastore bench scale: {exc}", flush=True)
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    write(results)
    print(format_markdown(results, meta), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
