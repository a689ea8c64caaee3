"""Watching the HMI processes by name: stopped, zombie, stuck in uninterruptible sleep, pegged CPU, gone.

A found process is kept by pid between polls; the process table is scanned only for names not found, and at
most every `rescan_s`, because a full scan costs milliseconds on a head unit.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import psutil

from ...dataclass_shared import dataclass

# Process states the rules know. "ok" means nothing suspicious.
OK, STOPPED, EXITED, BLOCKED_IO, BUSY, NOT_RUNNING = "ok", "stopped", "exited", "blocked_io", "busy", "not_running"
_STOPPED = {psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP}
_EXITED = {psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD}
COMM_LEN = 15  # Linux truncates /proc/<pid>/comm to 15 characters


@dataclass(frozen=True)
class ProcessState:
    name: str
    pid: int | None
    state: str
    since: float
    cpu_pct: float | None = None

    def fields(self) -> dict[str, object]:
        return {"process": self.name, "pid": self.pid, "state": self.state,
                "cpu_pct": None if self.cpu_pct is None else round(self.cpu_pct, 1)}


def classify(status: str, cpu_pct: float | None, *, d_since: float | None, busy_since: float | None,
             now: float, d_state_s: float, cpu_pegged_s: float) -> str:
    """Pure: one process's psutil status and CPU history → a rule state."""
    if status in _STOPPED:
        return STOPPED
    if status in _EXITED:
        return EXITED
    if status == psutil.STATUS_DISK_SLEEP and d_since is not None and now - d_since >= d_state_s:
        return BLOCKED_IO
    if cpu_pct is not None and busy_since is not None and now - busy_since >= cpu_pegged_s:
        return BUSY
    return OK


def name_matches(want: str, name: str, cmdline: list[str] | None) -> bool:
    if name == want or (len(want) > COMM_LEN and name == want[:COMM_LEN]):
        return True
    return bool(cmdline) and cmdline is not None and os.path.basename(cmdline[0]) == want


@dataclass
class _Tracked:
    proc: psutil.Process | None = None
    d_since: float | None = None
    busy_since: float | None = None
    state: str = NOT_RUNNING
    since: float = 0.0


class ProcessWatch:
    def __init__(self, names: Iterable[str], *, cpu_pegged_pct: float, cpu_pegged_s: float, d_state_s: float,
                 rescan_s: float = 5.0) -> None:
        self.names = tuple(names)
        self.cpu_pegged_pct = cpu_pegged_pct
        self.cpu_pegged_s = cpu_pegged_s
        self.d_state_s = d_state_s
        self.rescan_s = rescan_s
        self._tracked = {n: _Tracked() for n in self.names}
        self._last_scan = -1e18

    def _scan(self, now: float) -> None:
        missing = [n for n, t in self._tracked.items() if t.proc is None]
        if not missing or now - self._last_scan < self.rescan_s:
            return
        self._last_scan = now
        for p in psutil.process_iter(["name", "cmdline"]):
            for n in missing:
                if self._tracked[n].proc is None and name_matches(n, p.info["name"] or "", p.info["cmdline"]):
                    try:
                        p.cpu_percent(None)  # prime: the next call measures from here
                    except psutil.Error:
                        continue  # exited while we looked (a zombie reaped meanwhile)
                    self._tracked[n].proc = p
        for n in missing:
            if self._tracked[n].proc is not None:
                self._tracked[n].d_since = self._tracked[n].busy_since = None

    def poll(self, now: float) -> list[ProcessState]:
        self._scan(now)
        out = []
        for name, t in self._tracked.items():
            state, cpu, pid = NOT_RUNNING, None, None
            if t.proc is not None:
                try:
                    with t.proc.oneshot():
                        status = t.proc.status()
                        cpu = t.proc.cpu_percent(None)
                    pid = t.proc.pid
                    t.d_since = (t.d_since if t.d_since is not None else now) \
                        if status == psutil.STATUS_DISK_SLEEP else None
                    t.busy_since = (t.busy_since if t.busy_since is not None else now) \
                        if cpu >= self.cpu_pegged_pct else None
                    state = classify(status, cpu, d_since=t.d_since, busy_since=t.busy_since, now=now,
                                     d_state_s=self.d_state_s, cpu_pegged_s=self.cpu_pegged_s)
                except psutil.ZombieProcess:
                    state, pid = EXITED, t.proc.pid
                except (psutil.Error, OSError):
                    t.proc = None  # gone (or replaced): look it up again on the next scan
                    self._last_scan = -1e18
            if state != t.state:
                t.state, t.since = state, now
            out.append(ProcessState(name, pid, state, t.since, cpu))
        return out
