"""System health every `interval_s`: CPU, load, memory, the spool's filesystem, temperatures, the process count
and the agent itself.

Threads: the probe's own (PeriodicProbe), nothing else.

Read from /proc and sysfs by hand (agent/procfs.py, temps.py) instead of psutil's calls, which open,
read and close each file and parse all of it every time (issue 13: idle CPU at most 1.5x collectd's). Warm, on
the 2-core build machine: 315 µs a sample through psutil, of which 100 µs were sensors_temperatures finding no
sensor; the probe thread's idle CPU in the agent is in docs/performance.md (`python -m
tools.bench.idle_threads`). Values are psutil's definitions: CPU busy % of all cores since the last sample,
memory used = (MemTotal - MemAvailable) / MemTotal, the agent's CPU in % of one core.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

import psutil

from ...dataclass_shared import dataclass
from ...probe import PeriodicProbe, Probe, ProbeContext
from ...procfs import CpuTimes, KeptFiles, busy_pct, parse_meminfo, total_times
from ...records import Record
from ...schema import opt
from . import temps

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class Config:
    enabled: bool = True
    interval_s: float = opt(10.0, min=0.1, max=3600.0)
    temperatures: bool = True


def _r(x: float) -> float:
    # Two decimals is what a quality backend can use; it also keeps floats short in JSON views.
    return round(float(x), 2)


def _agent_cpu_s() -> float:
    t = os.times()  # the whole process: every thread's user and system time
    return t.user + t.system


class SystemProbe(PeriodicProbe):
    name = "system"

    def __init__(self, cfg: Config, ctx: ProbeContext, *, proc: str = "/proc", sys_root: str = "/sys") -> None:
        super().__init__(ctx, cfg.interval_s)
        self.cfg = cfg
        self.proc = proc
        self.sys_root = sys_root
        self._files = KeptFiles()
        self._sensors: list[tuple[str, str]] = []
        self._sensors_at = float("-inf")
        # The first sample's CPU figures cover the time since start-up, as psutil's primed cpu_percent did.
        self._total: CpuTimes | None = self._read_total()
        self._me = (time.monotonic(), _agent_cpu_s())

    def _read_total(self) -> CpuTimes | None:
        return total_times(self._files.read(f"{self.proc}/stat"))

    def close(self) -> None:
        self._files.close()

    def sample(self) -> Iterable[Record]:
        m = self.rec.metric
        cur = self._read_total()
        busy = busy_pct(self._total, cur) if self._total is not None and cur is not None else None
        self._total = cur
        load1, load5, _ = os.getloadavg()
        out = [
            m("system.cpu_pct", _r(busy[0] if busy else 0.0)),  # None: not one clock tick since the last sample
            m("system.load1", _r(load1)),
            m("system.load5", _r(load5)),
        ]
        used, avail = parse_meminfo(self._files.read(f"{self.proc}/meminfo"))
        if used is None or avail is None:
            self.counters.inc("meminfo_unreadable")
        else:
            out += [m("system.mem_used_pct", _r(used)), m("system.mem_available_mib", _r(avail))]
        out.append(m("system.procs", sum(map(str.isdigit, os.listdir(self.proc)))))
        try:
            du = psutil.disk_usage(self.ctx.spool_dir)
            out.append(m("system.disk_used_pct", _r(du.percent)))
            out.append(m("system.disk_free_mib", _r(du.free / 2**20)))
        except OSError:
            self.counters.inc("disk_unreadable")
        if self.cfg.temperatures:
            out.extend(self._temperatures())
        now, cpu_s = time.monotonic(), _agent_cpu_s()
        out.append(m("agent.cpu_pct", _r(100.0 * (cpu_s - self._me[1]) / max(now - self._me[0], 1e-3))))
        self._me = (now, cpu_s)
        rss = self._files.read(f"{self.proc}/{os.getpid()}/statm").split()
        out.append(m("agent.rss_mib", _r(int(rss[1]) * PAGE / 2**20)))
        return out

    def _temperatures(self) -> list[Record]:
        now = time.monotonic()
        if now - self._sensors_at >= temps.REDISCOVER_S:
            self._sensors, self._sensors_at = temps.discover(self.sys_root), now
        out = []
        for sensor, path in self._sensors:
            try:
                v = int(self._files.read(path).strip()) / 1000
            except (OSError, ValueError):
                self.counters.inc("temp_unreadable")  # a zone whose driver is gone or busy: this sample skips it
                continue
            out.append(self.rec.metric("system.temp_c", {"sensor": sensor, "v": _r(v)}))
        return out


def build(cfg: Config, ctx: ProbeContext) -> list[Probe]:
    return [SystemProbe(cfg, ctx)] if cfg.enabled else []
