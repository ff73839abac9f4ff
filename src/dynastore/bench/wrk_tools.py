"""What the wrk benchmarks (wrkbench.py, the headline; wrkfaults.py, faults per second) share: the load
generator process and its CPU, wrk's command line with kv.lua, the pre-load of the key space, and
finding etcd's leader.

A load generator's CPU is read from /proc/PID/stat (utime + stime) after it has exited and before it
is reaped, so that none of its time is missed; a server's, before and after the measured seconds.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

from dynastore.bench.wrk_report import parse_proc_stat
from dynastore.localcluster import http_json

DYNASTORE = "dynastore"
BUCKET = "wrk"
KEYS = 10_000
VALUE_BYTES = 1024
CONNECTIONS = 50
# The longest a load generator may run past its duration (start-up, connecting, printing).
GENERATOR_GRACE_S = 60.0
PRELOAD_WORKERS = 16
REDIS_PIPELINE = 500
POLL_S = 0.02


class BenchError(Exception):
    """A load generator failed, printed what cannot be parsed, or a store refused the pre-load."""


# --- processes and CPU -----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live (or exited, not yet reaped) process, in seconds."""
    with open(f"/proc/{pid}/stat") as stat:
        return parse_proc_stat(stat.read()) / os.sysconf("SC_CLK_TCK")


def cpu_of(pids: Sequence[int]) -> list[float]:
    out = []
    for pid in pids:
        try:
            out.append(cpu_seconds(pid))
        except OSError:
            out.append(0.0)
    return out


@dataclass
class Generator:
    """A load generator process whose output goes to a file and whose CPU is read before it is reaped."""

    command: list[str]
    output: Path
    timeout_s: float
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0

    def start(self) -> None:
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(self.command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.started = time.monotonic()

    def finish(self) -> tuple[str, float]:
        """Wait (bounded) for it to exit; its output and CPU seconds. Raises BenchError on failure."""
        proc = self.proc
        assert proc is not None, "finish() before start()"
        try:
            deadline = self.started + self.timeout_s
            while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                if time.monotonic() > deadline:
                    raise BenchError(f"{self.command[0]} still running after {self.timeout_s:.0f} s")
                time.sleep(POLL_S)
            cpu_s = cpu_seconds(proc.pid)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        text = self.output.read_text(errors="replace")
        if proc.returncode != 0:
            raise BenchError(f"{self.command[0]} exited with status {proc.returncode}:\n{text[-2000:]}")
        return text, cpu_s

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def lua_script() -> Path:
    return Path(str(resources.files("dynastore.bench").joinpath("wrk/kv.lua")))


def wrk_command(
    url: str,
    kind: str,
    op: str,
    *,
    duration_s: float,
    threads: int,
    connections: int,
    keys: int,
    value_bytes: int,
    log_dir: Path | None = None,
) -> list[str]:
    """wrk running kv.lua; with `log_dir`, one log of every response per thread (see kv.lua)."""
    command = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration_s:g}s", "--latency"]
    command += ["--timeout", "30s", "-s", str(lua_script()), url, "--", kind, op, str(keys), str(value_bytes), BUCKET]
    if log_dir is not None:
        command.append(str(log_dir))
    return command


# --- pre-loading ------------------------------------------------------------------------------------------


def _http_requests(url: str, requests: Sequence[tuple[str, str, bytes, str]]) -> None:
    """Send `requests` (method, path, body, content type) over one keep-alive connection; any answer
    other than 2xx is an error."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=30)
    try:
        for method, path, body, content_type in requests:
            conn.request(method, path, body=body, headers={"Content-Type": content_type})
            resp = conn.getresponse()
            answer = resp.read()
            if not 200 <= resp.status < 300:
                raise BenchError(f"{method} {url}{path}: {resp.status} {answer[:200]!r}")
    finally:
        conn.close()


def _value(value_bytes: int) -> bytes:
    return bytes(97 + i % 26 for i in range(value_bytes))


def set_bucket_props(url: str) -> None:
    """One value per key in the benchmark's bucket: a blind PUT replaces it (see NOTES)."""
    props = json.dumps({"props": {"allow_mult": False}}).encode()
    _http_requests(url, [("PUT", f"/buckets/{BUCKET}/props", props, "application/json")])


def preload_http(url: str, kind: str, keys: int, value_bytes: int) -> None:
    """Write every key of the key space once (dynastore: after setting the bucket's props)."""
    value = _value(value_bytes)
    if kind == DYNASTORE:
        set_bucket_props(url)
    requests: list[tuple[str, str, bytes, str]] = []
    for i in range(keys):
        if kind == DYNASTORE:
            requests.append(("PUT", f"/buckets/{BUCKET}/keys/k{i}", value, "application/octet-stream"))
        else:
            body = {"key": base64.b64encode(f"k{i}".encode()).decode(), "value": base64.b64encode(value).decode()}
            requests.append(("POST", "/v3/kv/put", json.dumps(body).encode(), "application/json"))
    shares = [requests[w::PRELOAD_WORKERS] for w in range(PRELOAD_WORKERS)]
    with ThreadPoolExecutor(PRELOAD_WORKERS) as pool:
        for future in [pool.submit(_http_requests, url, share) for share in shares if share]:
            future.result()


def redis_key(i: int) -> str:
    """redis-benchmark's key for random number i (`key:__rand_int__` with -r: 12 digits)."""
    return f"key:{i:012d}"


def preload_redis(address: str, keys: int, value_bytes: int) -> None:
    host, port = address.rsplit(":", 1)
    value = _value(value_bytes)
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        for first in range(0, keys, REDIS_PIPELINE):
            batch = range(first, min(keys, first + REDIS_PIPELINE))
            out = bytearray()
            for i in batch:
                key = redis_key(i).encode()
                out += b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value)
            sock.sendall(out)
            expected = b"+OK\r\n" * len(batch)
            got = b""
            while len(got) < len(expected):
                chunk = sock.recv(65536)
                if not chunk:
                    raise BenchError("redis closed the connection during the pre-load")
                got += chunk
            if got != expected:
                raise BenchError(f"redis refused the pre-load: {got[:200]!r}")


# --- etcd's leader ----------------------------------------------------------------------------------------


def etcd_leader(urls: Sequence[str]) -> int:
    """The index in `urls` of etcd's leader (from /v3/maintenance/status, asked of each member)."""
    leader_id = None
    members: list[str] = []
    for url in urls:
        status = http_json(url + "/v3/maintenance/status", method="POST", data=b"{}", timeout_s=5.0)
        members.append(str(status["header"]["member_id"]))
        leader_id = str(status["leader"])
    if leader_id not in members:
        raise BenchError(f"etcd's leader {leader_id} is none of its members {members}")
    return members.index(leader_id)


# --- one target -------------------------------------------------------------------------------------------


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Unwinds through every `finally`, so the stores, namespaces and generators of the run are removed.
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Within the block, SIGTERM raises SystemExit (as ycsb.py does) instead of ending the process at once."""
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
