"""System context at 1 Hz from /proc and /sys: CPU per core and I/O wait, memory, load, top processes by CPU,
thermal zones.

Hand-written instead of psutil because of cost: at 1 Hz the sampler must stay under 0.1 % of a core
(≤ 1 ms per second). One read each of /proc/stat, /proc/meminfo, /proc/loadavg and the thermal zones costs
~0.05 ms on the 2-core build machine; psutil's cpu_percent(percpu) + cpu_times_percent + virtual_memory +
sensors_temperatures cost ~0.17 ms (docs/performance.md, `python -m tools.bench.blackbox`). The process table
is the expensive part (one /proc/<pid>/stat read per process, ~1.8 ms for 145 processes): it is scanned every
`procs_interval_s` (5 s by default), not every second. Parsers are pure functions over text, tested from tables.

Issue 13 (idle CPU at most 1.5x collectd's): a turn at 1 Hz runs on a cold cache, ~5x its cost in a loop. The
system files are read through descriptors kept open (KeptFiles: pread at offset 0, no open/close per turn),
/proc/stat is split only up to its `intr` line and /proc/meminfo only at the two lines used: the sample went
from 66 to 37 µs in a loop and the black box thread from 2.39 to 2.08 CPU s/h in the agent (same run, same
minutes, with the recorder's lock pause; `python -m tools.bench.idle_threads --base`, docs/performance.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import field
from pathlib import Path

from ..dataclass_shared import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

CpuTimes = tuple[int, int, int]  # (total, idle incl. iowait, iowait) in clock ticks


def parse_stat(text: str) -> dict[str, CpuTimes]:
    """`cpu`/`cpuN` lines of /proc/stat → name: (total, idle+iowait, iowait). guest time is already counted in
    user (the kernel adds it there), so it is left out of the total. The `cpu` lines come first: the rest (the
    `intr` line alone is thousands of characters on an ARM SoC) is not split at all."""
    out: dict[str, CpuTimes] = {}
    end = text.find("\nintr")
    for line in (text if end < 0 else text[:end]).splitlines():
        if not line.startswith("cpu"):
            continue
        parts = line.split()
        try:
            v = [int(x) for x in parts[1:9]]
        except ValueError:
            continue
        v += [0] * (8 - len(v))
        user, nice, system, idle, iowait, irq, softirq, steal = v
        out[parts[0]] = (user + nice + system + idle + iowait + irq + softirq + steal, idle + iowait, iowait)
    return out


def cpu_pct(prev: Mapping[str, CpuTimes], cur: Mapping[str, CpuTimes]) -> tuple[float | None, list[float],
                                                                                  float | None]:
    """(total busy %, busy % per core in core order, I/O wait %) between two /proc/stat readings."""
    def busy(name: str) -> tuple[float, float] | None:
        if name not in prev or name not in cur:
            return None
        dt = cur[name][0] - prev[name][0]
        if dt <= 0:
            return None
        return (100.0 * (dt - (cur[name][1] - prev[name][1])) / dt, 100.0 * (cur[name][2] - prev[name][2]) / dt)

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


def parse_pid_stat(text: str) -> tuple[str, int] | None:
    """(comm, utime+stime ticks) from /proc/<pid>/stat; comm may hold spaces and parentheses."""
    lo, hi = text.find("("), text.rfind(")")
    if lo < 0 or hi < lo:
        return None
    rest = text[hi + 2:].split(None, 13)  # utime and stime are the 12th and 13th fields after comm: no more
    try:
        return text[lo + 1:hi], int(rest[11]) + int(rest[12])
    except (ValueError, IndexError):
        return None


def top_cpu(prev: Mapping[int, int], cur: Mapping[int, tuple[str, int]], dt_s: float, n: int) -> list[list[object]]:
    """The n processes that used most CPU between two scans: [[comm, % of one core], ...]. A pid the earlier scan
    did not see was started since (pids are not reused within seconds; pid_max is 4M on 64-bit), so all its
    ticks fall in the interval: a short burst by a new process shows at the first scan after it started
    instead of never, if it is gone by the next one."""
    if dt_s <= 0 or n <= 0:
        return []
    used = [(ticks - prev.get(pid, 0), comm) for pid, (comm, ticks) in cur.items() if ticks > prev.get(pid, 0)]
    used.sort(reverse=True)
    return [[comm, round(100.0 * d / CLK_TCK / dt_s, 1)] for d, comm in used[:n]]


def _read(path: str) -> str:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 65536).decode("ascii", "replace")
    finally:
        os.close(fd)


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


@dataclass
class SystemReader:
    """Keeps the previous counters; `sample()` returns one flat dict for the ring (numbers rounded)."""

    proc: str = "/proc"
    thermal: str = "/sys/class/thermal"
    temperatures: bool = True
    read: Callable[[str], str] | None = None  # None: through descriptors kept open (KeptFiles)
    _stat: dict[str, CpuTimes] = field(default_factory=dict)
    _zones: list[tuple[str, str]] | None = None
    _files: KeptFiles = field(default_factory=KeptFiles)

    def close(self) -> None:
        self._files.close()

    def _read(self, path: str) -> str:
        return self.read(path) if self.read is not None else self._files.read(path)

    def sample(self) -> dict[str, object]:
        out: dict[str, object] = {}
        cur = parse_stat(self._read(f"{self.proc}/stat"))
        if self._stat:
            total, per, iow = cpu_pct(self._stat, cur)
            if total is not None:
                out["cpu"] = round(total)
            for i, p in enumerate(per):
                out[f"cpu{i}"] = round(p)
            if iow is not None:
                out["iowait"] = round(iow, 1)
        self._stat = cur
        used, avail = parse_meminfo(self._read(f"{self.proc}/meminfo"))
        if used is not None and avail is not None:
            out["mem"] = round(used, 1)
            out["avail_mib"] = round(avail)
        load = parse_loadavg(self._read(f"{self.proc}/loadavg"))
        if load is not None:
            out["load1"] = load
        if self.temperatures:
            for name, path in self.zones():
                try:
                    out[f"temp.{name}"] = round(int(self._read(path).strip()) / 1000, 1)
                except (OSError, ValueError):
                    continue
        return out

    def zones(self) -> list[tuple[str, str]]:
        if self._zones is None:
            zones = []
            base = Path(self.thermal)
            for z in sorted(base.glob("thermal_zone*")) if base.is_dir() else []:
                try:
                    kind = (z / "type").read_text().strip()[:24] or z.name
                except OSError:
                    kind = z.name
                zones.append((f"{kind}{z.name.removeprefix('thermal_zone')}", str(z / "temp")))
            self._zones = zones[:8]
        return self._zones


@dataclass
class ProcessScanner:
    """Top processes by CPU between scans of /proc/<pid>/stat."""

    proc: str = "/proc"
    read: Callable[[str], str] = _read
    _prev: dict[int, int] = field(default_factory=dict)
    _prev_t: float | None = None

    def scan(self, now: float, n: int) -> list[list[object]] | None:
        cur: dict[int, tuple[str, int]] = {}
        for entry in os.listdir(self.proc):
            if not entry.isdigit():
                continue
            try:
                parsed = parse_pid_stat(self.read(f"{self.proc}/{entry}/stat"))
            except OSError:
                continue  # exited between listdir and read
            if parsed:
                cur[int(entry)] = parsed
        top = top_cpu(self._prev, cur, now - self._prev_t, n) if self._prev_t is not None else None
        self._prev = {pid: ticks for pid, (_, ticks) in cur.items()}
        self._prev_t = now
        return top
