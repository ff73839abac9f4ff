"""The machine a benchmark ran on, for its report: CPU, vCPUs, memory, OS, and the cores it really has.

A virtual machine may present more vCPUs than it can run at once (on the machine this was written
for, two vCPUs ran two busy processes each at half speed). Since the driver and every server share
the machine, that number matters more than the vCPU count, so it is measured: one busy process
alone, then one per vCPU at once; effective cores = vCPUs x (time alone / time together).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# A busy loop of about half a second on a current core: long enough to swamp process start-up.
_SPIN = "n = 0\nfor i in range(8_000_000):\n    n += i\n"
SPIN_TIMEOUT_S = 60.0


def _spin_seconds(processes: int) -> float:
    started = time.perf_counter()
    spinners = [subprocess.Popen([sys.executable, "-c", _SPIN]) for _ in range(processes)]
    try:
        for spinner in spinners:
            spinner.wait(timeout=SPIN_TIMEOUT_S)
    finally:
        for spinner in spinners:
            if spinner.poll() is None:
                spinner.kill()
                spinner.wait()
    return time.perf_counter() - started


def effective_cores() -> float:
    """How many busy processes this machine runs at full speed at once (measured, about 2 s)."""
    vcpus = os.cpu_count() or 1
    alone = _spin_seconds(1)
    together = _spin_seconds(vcpus)
    return vcpus * alone / together


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.partition("=")[2].strip('"')
    except OSError:
        pass
    return platform.system()


def describe(*, measure_cores: bool = True) -> dict[str, Any]:
    return {
        "cpu": _cpu_model(),
        "vcpus": os.cpu_count() or 1,
        "effective_cores": effective_cores() if measure_cores else float(os.cpu_count() or 1),
        "memory_gib": _memory_gib(),
        "os": _os_name(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
