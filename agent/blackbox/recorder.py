"""The black box: keeps the ring filled, watches the records that flow past, and emits snapshots.

Threads: one `blackbox` thread samples the system every `interval_s` (and the process table every
`procs_interval_s` while the CPU is busy, 24x less often while idle, and at the next turn after a trigger),
emits due snapshots and retires ended campaigns. A turn only reads the system files; what it read is parsed
into the ring every PARSE_EVERY turns, and before a snapshot is built. `tap()` is called from probe threads
(link, display, kmsg lines), `observe()` from the pipeline thread after each group commit (CAN bus statistics
and the triggers). Nothing here blocks a caller beyond the ring's lock.

A snapshot waits until T + post, then takes the ring's T - pre .. T + post. It is a record of its own kind
(`Kind.SNAPSHOT`, spool priority between metrics and events) named `blackbox.snapshot`, stamped at T, with the
triggering episode's id, so the backend links it to the episode. What a match sets off (limits, budget, the
snapshot's encoding) is in snapshot.py, imported at the first match: an idle car only matches (issue 13).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..clock import Clock
from ..counters import Counters
from ..records import Kind, Record, RecordFactory
from .ring import ContextRing
from .settings import BlackboxConfig
from .sysread import ProcessScanner, Raw, SystemReader
from .triggers import RateLimiter, Trigger, builtin

if TYPE_CHECKING:
    from .snapshot import Pending

log = logging.getLogger("icvq.blackbox")
# Process-table cadence (issue 13): a scan is ~85 % of the sampling cost, and while the unit is idle the top
# processes say nothing. Below IDLE_CPU_PCT total CPU (last `system` sample) the table is scanned every
# IDLE_PROCS_FACTOR x `procs_interval_s` (120 s at defaults); the first busy second, and every trigger, scan at
# the next turn, then every `procs_interval_s` while busy. A scan of ~130 processes costs ~3.5 ms at this rate
# (cold): every 5 s that was ~2.5 CPU s/h, every 30 s 0.42 s/h of the black box's ~1.3 (isolated, 180 s on the
# 2-core build machine), every 120 s ~0.1.
IDLE_CPU_PCT = 30.0
IDLE_PROCS_FACTOR = 24
# Parsing in batches (issue 13's idle CPU): a turn that wakes once a second runs on a cold cache, so parsing and
# storing one sample cost ~3x what they cost in a loop. Ten turns' readings parsed in one go cost what two did
# one at a time: in a 1 Hz thread on the 2-core build machine, read + parse + ring.add every turn 1.18 CPU s/h,
# reads every turn and the rest every 10th 0.56 s/h (150 s, same process). The ring then lags by up to
# PARSE_EVERY samples, which only snapshots read, and they parse the backlog first.
PARSE_EVERY = 10
# CAN bus statistics come as the probe's own `can.bus` metric records (one per bus and window).
CAN_KEYS = ("bus", "state", "load_pct", "frames_s", "err_frames", "drops", "tec", "rec")


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
        self._backlog: list[tuple[float, Raw]] = []  # taken, not yet parsed into the ring (black box thread only)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        # The thread's pause between turns: a lock held until stop() releases it. Acquiring it with a timeout is one
        # C call; Event.wait is a Condition's Python (a new lock, the waiter list), ~0.3 CPU s/h at 1 Hz on a cold
        # cache, a fifth of this thread's cost (issue 13's idle CPU goal; `python -m tools.bench.idle_threads`).
        self._pause = threading.Lock()
        self._pause.acquire()
        self._thread: threading.Thread | None = None
        self._last_procs = float("-inf")
        self._procs_now = False  # set by a trigger (pipeline thread): scan at the next turn
        self._taken: deque[float] = deque()  # when the snapshots of the last hour were triggered
        self.budget_path = budget_path
        if budget_path is not None and budget_path.exists():  # none until the first snapshot is taken
            from . import budget_store

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
        from . import snapshot  # the first match of an idle car (see snapshot.py)

        snapshot.take(self, r, hits, now)

    # ------------------------------------------------------------------------------------ thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="blackbox", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling; snapshots still waiting for their post window go out with what the ring has."""
        if not self._stop.is_set():  # the pause is released once, by the first stop
            self._stop.set()
            self._pause.release()
        if self._thread:
            self._thread.join(5)
        self.flush(force=True)
        close = getattr(self.system, "close", None)  # the descriptors SystemReader keeps open (tests pass fakes)
        if close is not None:
            close()

    def _run(self) -> None:
        next_at = self.clock.mono()
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:
                log.exception("black box step failed")
                self.counters.inc("errors")
            next_at = max(next_at + self.cfg.interval_s, self.clock.mono())
            due = next_at
            if self._pending:  # the lock only when a snapshot waits: this runs every second
                with self._lock:
                    due = min((p.due for p in self._pending), default=next_at)
            if self._pause.acquire(timeout=max(0.0, min(next_at, due) - self.clock.mono())):
                self._pause.release()  # stop() released it: leave it free for any later look

    def step(self) -> None:
        now = self.clock.mono()
        cpu: object = None
        if "system" in self.enabled_channels:
            self._backlog.append((now, self.system.take()))
            cpu = self.system.cpu
            if len(self._backlog) >= PARSE_EVERY:
                self._parse_backlog()
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

    def _parse_backlog(self) -> None:
        backlog, self._backlog = self._backlog, []
        for t, raw in backlog:
            self.ring.add("system", t, self.system.parse(raw))

    def flush(self, force: bool = False) -> None:
        if not (self._pending or force):
            return  # nothing waits (the list is swapped whole under the lock: reading it here is safe)
        now = self.clock.mono()
        with self._lock:
            due = [p for p in self._pending if force or p.due <= now]
            self._pending = [p for p in self._pending if p not in due]
        if due or force:
            self._parse_backlog()
        for p in due:
            self.emit(self.snapshot(p, complete=p.due <= now))

    # ------------------------------------------------------------------------------------ output
    def snapshot(self, p: Pending, complete: bool = True) -> Record:
        from . import snapshot

        return snapshot.build(self, p, complete)

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
