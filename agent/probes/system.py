"""System health: CPU, load, memory, the spool's filesystem, temperatures, processes and the agent itself."""

from __future__ import annotations

import os
from collections.abc import Iterable

import psutil

from ..dataclass_shared import dataclass
from ..probe import PeriodicProbe, Probe, ProbeContext
from ..records import Record
from ..schema import opt


@dataclass(frozen=True)
class Config:
    enabled: bool = True
    interval_s: float = opt(10.0, min=0.1, max=3600.0)
    temperatures: bool = True


def _r(x: float) -> float:
    # Two decimals is what a quality backend can use; it also keeps floats short in JSON views.
    return round(float(x), 2)


class SystemProbe(PeriodicProbe):
    name = "system"

    def __init__(self, cfg: Config, ctx: ProbeContext) -> None:
        super().__init__(ctx, cfg.interval_s)
        self.cfg = cfg
        self._me = psutil.Process()
        psutil.cpu_percent(None)  # prime: the first call has no interval to compare against
        self._me.cpu_percent(None)

    def sample(self) -> Iterable[Record]:
        m = self.rec.metric
        vm = psutil.virtual_memory()
        load1, load5, _ = os.getloadavg()
        out = [
            m("system.cpu_pct", _r(psutil.cpu_percent(None))),
            m("system.load1", _r(load1)),
            m("system.load5", _r(load5)),
            m("system.mem_used_pct", _r(vm.percent)),
            m("system.mem_available_mib", _r(vm.available / 2**20)),
            m("system.procs", len(psutil.pids())),
        ]
        try:
            du = psutil.disk_usage(self.ctx.spool_dir)
            out.append(m("system.disk_used_pct", _r(du.percent)))
            out.append(m("system.disk_free_mib", _r(du.free / 2**20)))
        except OSError:
            self.counters.inc("disk_unreadable")
        if self.cfg.temperatures:
            out.extend(self._temperatures())
        with self._me.oneshot():
            out.append(m("agent.cpu_pct", _r(self._me.cpu_percent(None))))
            out.append(m("agent.rss_mib", _r(self._me.memory_info().rss / 2**20)))
        return out

    def _temperatures(self) -> list[Record]:
        reader = getattr(psutil, "sensors_temperatures", None)
        if reader is None:
            return []
        try:
            temps = reader()
        except (OSError, RuntimeError):
            self.counters.inc("temp_unreadable")
            return []
        return [self.rec.metric("system.temp_c", {"sensor": f"{chip}.{t.label or i}", "v": _r(t.current)})
                for chip, entries in sorted(temps.items()) for i, t in enumerate(entries)]


def build(cfg: Config, ctx: ProbeContext) -> list[Probe]:
    return [SystemProbe(cfg, ctx)] if cfg.enabled else []
