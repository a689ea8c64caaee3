"""System context at 1 Hz from /proc and /sys: CPU per core and I/O wait, memory, load, top processes by CPU,
thermal zones.

Hand-written instead of psutil because of cost: at 1 Hz the sampler must stay under 0.1 % of a core
(≤ 1 ms per second). One read each of /proc/stat, /proc/meminfo, /proc/loadavg and the thermal zones costs
~0.05 ms on the 2-core build machine; psutil's cpu_percent(percpu) + cpu_times_percent + virtual_memory +
sensors_temperatures cost ~0.17 ms (docs/performance.md, `python -m tools.bench.blackbox`). The process table
is the expensive part (one /proc/<pid>/stat read per process, ~1.8 ms for 145 processes): it is scanned every
`procs_interval_s` (5 s by default), not every second. Parsers are pure functions over text, tested from tables.
`take()` only reads (the black box's every turn) and `parse()` runs later, ten readings at once (recorder.py);
/proc/loadavg is read every 5 s, as often as the kernel recomputes it.

Issue 13 (idle CPU at most 1.5x collectd's): a turn at 1 Hz runs on a cold cache, ~5x its cost in a loop. The
system files are read through descriptors kept open (agent/procfs.py's KeptFiles: pread at offset 0, no
open/close per turn), /proc/stat is split only up to its `intr` line and /proc/meminfo only at the two lines
used: the sample went from 66 to 37 µs in a loop and the black box thread from 2.39 to 2.08 CPU s/h in the
agent (same run, same minutes, with the recorder's lock pause; `python -m tools.bench.idle_threads --base`,
docs/performance.md).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import field
from pathlib import Path

from ..dataclass_shared import dataclass
from ..procfs import (
    CLK_TCK,
    CpuTimes,
    KeptFiles,
    busy_pct,
    cpu_pct,
    parse_loadavg,
    parse_meminfo,
    parse_stat,
    total_times,
)

__all__ = ["CLK_TCK", "KeptFiles", "ProcessScanner", "SystemReader", "cpu_pct", "parse_loadavg", "parse_meminfo",
           "parse_pid_stat", "parse_stat", "top_cpu"]


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


# The kernel computes the load average every 5 s (LOAD_FREQ): a second reading in between returns the same text.
LOADAVG_EVERY_S = 5.0
Raw = tuple[str, str, str, tuple[str | None, ...]]  # /proc/stat up to `intr`, meminfo, loadavg, zone readings


@dataclass
class SystemReader:
    """`take()` reads the files (each turn), `parse()` turns what it read into one flat dict for the ring
    (numbers rounded), in the order taken: it keeps the previous CPU counters. `sample()` does both at once.
    `cpu` is the total busy % between the last two takes, from /proc/stat's first line alone."""

    proc: str = "/proc"
    thermal: str = "/sys/class/thermal"
    temperatures: bool = True
    read: Callable[[str], str] | None = None  # None: through descriptors kept open (KeptFiles)
    cpu: float | None = None
    _stat: dict[str, CpuTimes] = field(default_factory=dict)
    _total: CpuTimes | None = None
    _load: str = ""
    _load_at: float = float("-inf")
    _zones: list[tuple[str, str]] | None = None
    _files: KeptFiles = field(default_factory=KeptFiles)

    def close(self) -> None:
        self._files.close()

    def _read(self, path: str) -> str:
        return self.read(path) if self.read is not None else self._files.read(path)

    def take(self) -> Raw:
        stat = self._read(f"{self.proc}/stat")
        end = stat.find("\nintr")
        if end >= 0:
            stat = stat[:end]  # ~3,000 characters of interrupt counters on an ARM SoC, never used
        total = total_times(stat)
        if total is not None:
            if self._total is not None and (busy := busy_pct(self._total, total)) is not None:
                self.cpu = busy[0]
            self._total = total
        now = time.monotonic()
        if now - self._load_at >= LOADAVG_EVERY_S:
            self._load, self._load_at = self._read(f"{self.proc}/loadavg"), now
        temps: tuple[str | None, ...] = ()
        if self.temperatures:
            temps = tuple(self._try(path) for _, path in self.zones())
        mem = self._read(f"{self.proc}/meminfo")
        end = mem.find("\n", mem.find("\nMemAvailable:") + 1)  # up to MemAvailable: the ~50 lines after, unused
        return stat, mem if end < 0 else mem[:end], self._load, temps

    def _try(self, path: str) -> str | None:
        try:
            return self._read(path)
        except OSError:
            return None

    def parse(self, raw: Raw) -> dict[str, object]:
        stat, meminfo, loadavg, temps = raw
        out: dict[str, object] = {}
        cur = parse_stat(stat)
        if self._stat:
            total, per, iow = cpu_pct(self._stat, cur)
            if total is not None:
                out["cpu"] = round(total)
            for i, p in enumerate(per):
                out[f"cpu{i}"] = round(p)
            if iow is not None:
                out["iowait"] = round(iow, 1)
        self._stat = cur
        used, avail = parse_meminfo(meminfo)
        if used is not None and avail is not None:
            out["mem"] = round(used, 1)
            out["avail_mib"] = round(avail)
        load = parse_loadavg(loadavg)
        if load is not None:
            out["load1"] = load
        for (name, _), text in zip(self.zones() if temps else (), temps, strict=False):
            try:
                out[f"temp.{name}"] = round(int((text or "").strip()) / 1000, 1)
            except ValueError:
                continue
        return out

    def sample(self) -> dict[str, object]:
        return self.parse(self.take())

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
