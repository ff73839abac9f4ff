"""A virtual environment holding basho's Riak client (`riak` 2.7.0 from PyPI), built once and reused.

The client cannot share the project's environment: it pins a 2013 protobuf (`python3_protobuf`, which
installs a `google.protobuf` of its own) and needs import-time shims on current Pythons. So it gets its
own venv under `.cache/riak-client-venv` (git-ignored) and runs as a subprocess. Building the venv is
the only step that needs the network: when PyPI cannot be reached, `riak_client_python` raises
PyPIUnreachable; any other failure to build is an error, never a reason to skip.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = REPO_ROOT / ".cache"
VENV_DIR = CACHE_DIR / "riak-client-venv"
STAMP_NAME = "dynastore-riak-client.json"


def requirements() -> list[str]:
    """What the client needs on this Python: from 3.12 `distutils` comes from setuptools, and from 3.13
    the `cgi` module from legacy-cgi (the client imports both)."""
    wanted = ["riak==2.7.0"]
    if sys.version_info >= (3, 12):
        wanted.append("setuptools<80")
    if sys.version_info >= (3, 13):
        wanted.append("legacy-cgi")
    return wanted


# What pip prints when it cannot reach the index at all (DNS, refused, unroutable, proxy, time-outs).
UNREACHABLE_MARKERS = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "nodename nor servname provided",
    "Network is unreachable",
    "No route to host",
    "Connection refused",
    "ConnectTimeoutError",
    "Read timed out",
    "ProxyError",
)


class PyPIUnreachable(Exception):
    """PyPI could not be reached to install the client; the message is pip's own account of it."""


def riak_client_python(timeout_s: float = 150.0) -> Path:
    """The interpreter of a venv where `import riak` works, building the venv first if needed."""
    CACHE_DIR.mkdir(exist_ok=True)
    stamp = {"python": sys.version, "requirements": requirements()}
    python = VENV_DIR / "bin" / "python"
    with open(CACHE_DIR / "riak-client-venv.lock", "w") as lock:
        # Two test runs at once must not build into the same directory.
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if json.loads((VENV_DIR / STAMP_NAME).read_text()) == stamp and python.exists():
                return python
        except (OSError, ValueError):
            pass
        shutil.rmtree(VENV_DIR, ignore_errors=True)
        _run([sys.executable, "-m", "venv", str(VENV_DIR)], timeout_s, "create the client's venv")
        pip = [str(python), "-m", "pip", "install", "--no-input", "--timeout", "20", "--retries", "1"]
        _run([*pip, *requirements()], timeout_s, "install the Riak client", network=True)
        (VENV_DIR / STAMP_NAME).write_text(json.dumps(stamp))
        return python


def _run(cmd: list[str], timeout_s: float, what: str, network: bool = False) -> None:
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"could not {what}: still running after {timeout_s:.0f} s") from None
    if done.returncode == 0:
        return
    output = done.stdout + done.stderr
    if network:
        reasons = [line.strip() for line in output.splitlines() if any(m in line for m in UNREACHABLE_MARKERS)]
        if reasons:
            raise PyPIUnreachable(reasons[0])
    raise RuntimeError(f"could not {what} (exit {done.returncode}):\n{output[-4000:]}")
