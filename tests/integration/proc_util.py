"""Running the `dynastore` command as a user does, and stopping the processes a test started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable


def run_dynastore(
    *args: str, env: dict[str, str] | None = None, timeout_s: float = 120, clean_env: bool = False
) -> subprocess.CompletedProcess[str]:
    """`dynastore ARGS` in a new interpreter (stdout and stderr as text; never raises on a failure).
    `clean_env`: without this process's DYNASTORE_* variables, so that `env` gives exactly the test's own."""
    base = {k: v for k, v in os.environ.items() if not (clean_env and k.startswith("DYNASTORE_"))}
    return subprocess.run(
        [sys.executable, "-m", "dynastore", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        env={**base, **(env or {})},
    )


def dynastore_ok(*args: str) -> str:
    """`dynastore ARGS`, which must succeed: its standard output."""
    result = run_dynastore(*args)
    assert result.returncode == 0, f"{' '.join(args)}: {result.stderr}"
    return result.stdout


def stop_process_groups(procs: Iterable[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process group still running, then SIGKILL those that do not stop within 15 s."""
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
