"""Readers of /proc shared by the black box's 1 Hz sampler (agent/blackbox/sysread.py) and the system probe's
10 s metrics (agent/probes/system/): descriptors kept open, and pure parsers over the text, tested from tables.

No threads of its own: each reader belongs to the thread that samples with it.

Hand-written instead of psutil because of cost (issue 13: idle CPU at most 1.5x collectd's): psutil opens,
reads and closes each file per call and parses all of it; here /proc/stat is split only up to its `intr` line,
/proc/meminfo only at the two lines used, and every file is read through a descriptor kept open (pread at
offset 0 makes procfs generate the text afresh). Figures are in docs/performance.md (`python -m
tools.bench.idle_threads`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

CpuTimes = tuple[int, int, int]  # (total, idle incl. iowait, iowait) in clock ticks


def cpu_times(line: str) -> tuple[str, CpuTimes] | None:
    """One `cpu`/`cpuN` line of /proc/stat → (name, (total, idle+iowait, iowait)). guest time is already counted
    in user (the kernel adds it there), so it is left out of the total."""
    parts = line.split()
    try:
        v = [int(x) for x in parts[1:9]]
    except ValueError:
        return None
    v += [0] * (8 - len(v))
    user, nice, system, idle, iowait, irq, softirq, steal = v
    return parts[0], (user + nice + system + idle + iowait + irq + softirq + steal, idle + iowait, iowait)


def total_times(text: str) -> CpuTimes | None:
    """The aggregate `cpu` line alone, the first of /proc/stat: what a total busy % needs, without the per-core
    lines."""
    named = cpu_times(text.partition("\n")[0])
    return named[1] if named is not None and named[0] == "cpu" else None


def parse_stat(text: str) -> dict[str, CpuTimes]:
    """`cpu`/`cpuN` lines of /proc/stat → name: (total, idle+iowait, iowait). The `cpu` lines come first: the
    rest (the `intr` line alone is thousands of characters on an ARM SoC) is not split at all."""
    out: dict[str, CpuTimes] = {}
    end = text.find("\nintr")
    for line in (text if end < 0 else text[:end]).splitlines():
        if line.startswith("cpu") and (named := cpu_times(line)) is not None:
            out[named[0]] = named[1]
    return out


def busy_pct(prev: CpuTimes, cur: CpuTimes) -> tuple[float, float] | None:
    """(busy %, I/O wait %) between two readings of one line; None: not one clock tick between them."""
    dt = cur[0] - prev[0]
    if dt <= 0:
        return None
    return 100.0 * (dt - (cur[1] - prev[1])) / dt, 100.0 * (cur[2] - prev[2]) / dt


def cpu_pct(prev: Mapping[str, CpuTimes], cur: Mapping[str, CpuTimes]) -> tuple[float | None, list[float],
                                                                                  float | None]:
    """(total busy %, busy % per core in core order, I/O wait %) between two /proc/stat readings."""
    def busy(name: str) -> tuple[float, float] | None:
        return busy_pct(prev[name], cur[name]) if name in prev and name in cur else None

    total = busy("cpu")
    if total is None:
        return None, [], None  # less than one clock tick between the readings
    cores = sorted((int(n[3:]), n) for n in cur if n[3:].isdigit())
    per = [b[0] if b else 0.0 for b in (busy(n) for _, n in cores)]
    return total[0], per, total[1]


def _meminfo_kib(text: str, key: str) -> int | None:
    """The value of one `Key:   123 kB` line, found by its name instead of parsing all ~50 lines."""
    if text.startswith(key):
        i = 0
    else:
        i = text.find("\n" + key)
        if i < 0:
            return None
        i += 1
    j = text.find("\n", i)
    try:
        return int(text[i + len(key):j if j >= 0 else len(text)].split()[0])
    except (ValueError, IndexError):
        return None


def parse_meminfo(text: str) -> tuple[float | None, float | None]:
    """(used %, available MiB) from /proc/meminfo."""
    total, avail = _meminfo_kib(text, "MemTotal:"), _meminfo_kib(text, "MemAvailable:")
    if not total or avail is None:
        return None, None
    return 100.0 * (total - avail) / total, avail / 1024


def parse_loadavg(text: str) -> float | None:
    try:
        return float(text.split()[0])
    except (ValueError, IndexError):
        return None



class KeptFiles:
    """Reads the same few /proc and /sys files every second through descriptors kept open: a read at offset 0
    makes procfs and sysfs generate the text afresh, so an open and a close per file and turn are saved."""

    def __init__(self) -> None:
        self._fds: dict[str, int] = {}

    def read(self, path: str) -> str:
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.pread(fd, 65536, 0).decode("ascii", "replace")
        except OSError:
            self.close(path)  # a thermal zone gone with its driver: opened afresh (or failing) next time
            raise

    def close(self, path: str | None = None) -> None:
        for p in [path] if path is not None else list(self._fds):
            fd = self._fds.pop(p, None)
            if fd is not None:
                os.close(fd)

    def __del__(self) -> None:
        self.close()
