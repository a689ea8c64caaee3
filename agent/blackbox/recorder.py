"""The black box: keeps the ring filled, watches the records that flow past, and emits snapshots.

Threads: one `blackbox` thread samples the system every `interval_s` (and the process table every
`procs_interval_s` while the CPU is busy, 6x less often while idle, and at the next turn after a trigger),
emits due snapshots and retires ended campaigns. `tap()` is called from probe threads
(link, display, kmsg lines), `observe()` from the pipeline thread after each group commit (CAN bus statistics
and the triggers). Nothing here blocks a caller beyond the ring's lock.

A snapshot waits until T + post, then takes the ring's T - pre .. T + post. It is a record of its own kind
(`Kind.SNAPSHOT`, spool priority between metrics and events) named `blackbox.snapshot`, stamped at T, with the
triggering episode's id, so the backend links it to the episode.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..clock import Clock
from ..counters import Counters
from ..dataclass_shared import dataclass
from ..records import Kind, Record, RecordFactory
from . import budget_store, columns
from .ring import ContextRing
from .settings import CHANNELS, BlackboxConfig
from .sysread import ProcessScanner, SystemReader
from .triggers import RateLimiter, Trigger, builtin, family, onset

log = logging.getLogger("icvq.blackbox")

SNAPSHOT = "blackbox.snapshot"
# Process-table cadence (issue 13): a scan is ~85 % of the sampling cost, and while the unit is idle the top
# processes say nothing. Below IDLE_CPU_PCT total CPU (last `system` sample) the table is scanned every
# IDLE_PROCS_FACTOR x `procs_interval_s` (30 s at defaults); the first busy second, and every trigger, scan at
# the next turn, then every `procs_interval_s` while busy. Saves ~0.8 of the ~1.1 CPU s/h the scans cost.
IDLE_CPU_PCT = 30.0
IDLE_PROCS_FACTOR = 6
# CAN bus statistics come as the probe's own `can.bus` metric records (one per bus and window).
CAN_KEYS = ("bus", "state", "load_pct", "frames_s", "err_frames", "drops", "tec", "rec")


@dataclass
class Pending:
    due: float
    t: float
    record: Record
    capture: tuple[str, ...]
    pre_s: float
    post_s: float
    campaigns: tuple[str, ...]
    family_key: str | None


class BlackBox:
    def __init__(self, cfg: BlackboxConfig, clock: Clock, emit: Callable[[Record], None], *,
                 system: SystemReader | None = None, scanner: ProcessScanner | None = None,
                 budget_path: Path | None = None) -> None:
        self.cfg = cfg
        self.clock = clock
        self.emit = emit
        self.rec = RecordFactory(clock)
        self.counters = Counters()
        self.ring = ContextRing(cfg.window_s, cfg.max_kib * 1024, min_gap_s=min(0.9, cfg.interval_s * 0.9),
                                kmsg_per_s=cfg.kmsg_per_s, kmsg_burst=cfg.kmsg_burst,
                                kmsg_max_chars=cfg.kmsg_max_chars, counters=self.counters)
        self.enabled_channels = frozenset(cfg.capture) - ({"procs"} if cfg.top_procs == 0 else set())
        self.system = system or SystemReader(temperatures=cfg.temperatures)
        self.scanner = scanner or ProcessScanner()
        self.limiter = RateLimiter()
        self.builtin = builtin(cfg.families, cfg.events, cfg.capture, cfg.pre_s, cfg.post_s, cfg.min_interval_s)
        self.campaign_triggers: list[Trigger] = []
        self.on_tick: list[Callable[[], None]] = []
        self._pending: list[Pending] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_procs = float("-inf")
        self._procs_now = False  # set by a trigger (pipeline thread): scan at the next turn
        self._taken: deque[float] = deque()  # when the snapshots of the last hour were triggered
        self.budget_path = budget_path
        if budget_path is not None:
            b = budget_store.load(budget_path, clock.boot_id, clock.mono())
            self._taken.extend(b.taken)
            self.limiter.last.update(b.last)
            self.limiter.taken.update(b.counts)

    # ------------------------------------------------------------------------------------ inputs
    def tap(self, channel: str, fields: Mapping[str, Any]) -> None:
        """Context from a probe (any thread). Channels not captured cost one set lookup."""
        if channel in self.enabled_channels:
            self.ring.add(channel, self.clock.mono(), fields)

    def observe(self, records: list[Record]) -> None:
        """Pipeline observer: CAN statistics into the ring; triggers start snapshots."""
        for r in records:
            if r.kind is Kind.METRIC:
                if r.name == "can.bus" and "can" in self.enabled_channels and isinstance(r.data, dict):
                    self.ring.add("can", r.mono_ms / 1000, {k: r.data[k] for k in CAN_KEYS if k in r.data},
                                  key=str(r.data.get("bus", "")))
            elif r.kind in (Kind.BEGIN, Kind.EVENT, Kind.END) and not r.name.startswith("blackbox."):
                self._trigger(r)

    def set_campaign_triggers(self, triggers: list[Trigger]) -> None:
        self.campaign_triggers = list(triggers)  # one assignment: the observer sees the old or the new set

    def _trigger(self, r: Record) -> None:
        now = self.clock.mono()
        hits = [t for t in (*self.builtin, *self.campaign_triggers) if t.matches(r)]
        if not hits:
            return
        # One budget over all triggers: campaigns may set short intervals, the cellular link stays bounded.
        while self._taken and now - self._taken[0] >= 3600.0:
            self._taken.popleft()
        if len(self._taken) >= self.cfg.max_per_hour:
            self.counters.inc("suppressed.hourly_cap")
            return
        taken = [t for t in hits if self.limiter.allow(t, now)]
        for t in hits:
            if t not in taken:
                self.counters.inc(f"suppressed.{t.key}")
        if not taken:
            return
        self._taken.append(now)
        self._save_budget(hits)
        self._procs_now = True
        pre = max(t.pre_s for t in taken)
        post = max(t.post_s for t in taken)
        capture = tuple(c for c in CHANNELS if any(c in t.capture for t in taken) and c in self.enabled_channels)
        t0 = onset(r, pre)
        p = Pending(t0 + post, t0, r, capture, pre, post, tuple(t.campaign for t in taken if t.campaign),
                    next((t.key for t in taken if t.campaign is None), None))
        with self._lock:
            self._pending.append(p)
        self.counters.inc("triggered")

    def _save_budget(self, hits: list[Trigger]) -> None:
        if self.budget_path is None:
            return
        # Keys of triggers that no longer exist (a retired campaign) are forgotten; these hits are current.
        live = {t.key for t in (*self.builtin, *self.campaign_triggers, *hits)}
        lim = self.limiter
        try:
            budget_store.save(self.budget_path, self.clock.boot_id, self._taken,
                              {k: v for k, v in lim.last.items() if k in live},
                              {k: v for k, v in lim.taken.items() if k in live})
        except OSError as e:
            # A full or read-only disk: the budget still holds in memory for this run.
            if not self.counters.get("budget_unsaved"):
                log.warning("snapshot budget not saved to %s (%s); it holds for this run only", self.budget_path, e)
            self.counters.inc("budget_unsaved")

    # ------------------------------------------------------------------------------------ thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="blackbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling; snapshots still waiting for their post window go out with what the ring has."""
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        self.flush(force=True)

    def _run(self) -> None:
        next_at = self.clock.mono()
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:
                log.exception("black box step failed")
                self.counters.inc("errors")
            next_at = max(next_at + self.cfg.interval_s, self.clock.mono())
            with self._lock:
                due = min((p.due for p in self._pending), default=next_at)
            self._stop.wait(max(0.0, min(next_at, due) - self.clock.mono()))

    def step(self) -> None:
        now = self.clock.mono()
        cpu: object = None
        if "system" in self.enabled_channels:
            sample = self.system.sample()
            cpu = sample.get("cpu")
            self.ring.add("system", now, sample)
        idle = isinstance(cpu, (int, float)) and cpu < IDLE_CPU_PCT
        # Due at the turn nearest its time: turns wake a few ms late or early, and a strict `>=` turns a 0.5 s
        # cadence into 1 s whenever the previous turn was the late one.
        every = self.cfg.procs_interval_s * (IDLE_PROCS_FACTOR if idle else 1) - self.cfg.interval_s / 2
        if "procs" in self.enabled_channels and (self._procs_now or now - self._last_procs >= every):
            self._procs_now = False
            self._last_procs = now
            top = self.scanner.scan(now, self.cfg.top_procs)
            if top is not None:
                self.ring.add("procs", now, {"top": top})
        self.flush()
        for f in self.on_tick:
            f()

    def flush(self, force: bool = False) -> None:
        now = self.clock.mono()
        with self._lock:
            due = [p for p in self._pending if force or p.due <= now]
            self._pending = [p for p in self._pending if p not in due]
        for p in due:
            self.emit(self.snapshot(p, complete=p.due <= now))

    # ------------------------------------------------------------------------------------ output
    def snapshot(self, p: Pending, complete: bool = True) -> Record:
        base = p.t - p.pre_s
        windows = self.ring.window(base, p.t + p.post_s, p.capture)
        chans, truncated = columns.build(windows, base, p.t, self.cfg.snapshot_max_kib * 1024)
        r = p.record
        t_ms = round(p.t * 1000)
        data: dict[str, Any] = {
            "trigger": r.name, "trigger_kind": r.kind.label, "family": family(r.name),
            "base_ms": r.wall_ms - (r.mono_ms - t_ms) - round(p.pre_s * 1000),
            "pre_s": p.pre_s, "post_s": p.post_s, "complete": complete, **chans}
        if p.campaigns:
            data["campaigns"] = list(p.campaigns)
        if truncated:
            data["truncated"] = truncated
        if r.kind is Kind.EVENT:
            # An event has no episode to link to: its scalar fields travel along (long strings cut).
            items = r.data.items() if isinstance(r.data, dict) else ()
            data["trigger_fields"] = {k: v[:200] if isinstance(v, str) else v for k, v in items
                                      if isinstance(v, (int, float, str, bool))}
        self.counters.inc("snapshots")
        return self.rec.snapshot(SNAPSHOT, data, of=r, mono_ms=t_ms)

    def health(self) -> list[Record]:
        c = self.counters.snapshot()
        supp = {k.removeprefix("suppressed."): v for k, v in c.items() if k.startswith("suppressed.")}
        return [self.rec.health("agent.blackbox", {
            "ring_bytes": self.ring.bytes, "snapshots": c.get("snapshots", 0),
            "suppressed": sum(supp.values()), "kmsg_suppressed": c.get("kmsg_suppressed", 0),
            "errors": c.get("errors", 0)})]

    def status(self) -> dict[str, Any]:
        c = self.counters.snapshot()
        with self._lock:
            pending = len(self._pending)
        return {"ring": self.ring.stats(), "channels": sorted(self.enabled_channels), "pending": pending,
                "counters": c, "window_s": self.cfg.window_s, "pre_s": self.cfg.pre_s, "post_s": self.cfg.post_s}
