"""What this host grants the process (the CPUs it may use and whether they compute bf16 natively)
and what tells it from other hosts and containers sharing a folder.

Pure reads of /proc and /sys, with no torch import, so that the CLI's log and both backends share
one answer."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU multiplies bf16 natively (AVX-512 BF16 or AMX), from /proc/cpuinfo's flags.
    Without it, bf16 convolutions are emulated and slower than fp32."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as handle:
                cpuinfo = handle.read()
        except OSError:
            return False
    flags = {flag for line in cpuinfo.splitlines() if line.startswith("flags") for flag in line.split()}
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def cgroup_cpu_quota(cpu_max: str) -> float | None:
    """CPUs granted by a cgroup v2 `cpu.max` line ("<quota> <period>", quota "max" = no limit),
    e.g. 2.5 for `docker run --cpus 2.5`; None when unlimited or unreadable."""
    fields = cpu_max.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def usable_cpus(cpu_max_path: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """The cores this process may actually use: its affinity mask (taskset, a container's cpuset),
    capped by the cgroup's CPU quota (`docker run --cpus`), which the mask does not show.
    os.cpu_count() counts the whole machine and would oversubscribe a container."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota = cgroup_cpu_quota(cpu_max_path.read_text())
    except OSError:
        quota = None
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return cpus


def machine_identity() -> str:
    """What tells this machine and PID namespace apart from every other that may write into a
    shared folder: the host name, the boot ID (two nodes may both be called `localhost`) and the
    PID namespace (every container on a host has its own PID 1). A process ID identifies a
    process only together with it. Parts that cannot be read (not Linux) are left out."""
    import socket

    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    with contextlib.suppress(OSError):
        parts.append(os.readlink("/proc/self/ns/pid"))
    return "\n".join(parts)
