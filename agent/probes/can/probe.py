"""CanProbe: one thread for every watched bus. It sleeps in poll() while the buses are quiet and, while
monitored frames flow, wakes once per `read_interval_ms` to drain all sockets in batches. A wake-up of a
Python thread costs far more than reading one more queued frame (tens of µs on a head-unit CPU, several ms
in the emulated test guest, where it dominated the probe's cost), and frames keep their kernel receive
timestamps, so batching only delays detection by up to one interval; durations and jitter stay exact."""

from __future__ import annotations

import os
import select
from collections.abc import Iterable
from typing import Any

from ...errors import ProbeError
from ...probe import ProbeContext, StreamProbe
from ...records import Record
from .bus_monitor import BusMonitor
from .buses import Bus, SocketCanBus, make_bus
from .config import Config
from .monitor import SensorMonitor
from .spec import SensorSpec

SAFE_BATCH = 120
RETRY_MIN_S = 2.0
RETRY_MAX_S = 60.0


class CanProbe(StreamProbe):
    name = "can"
    # receive() waits for the next deadline itself; stop() interrupts it through a pipe. Waking every
    # poll_s on a quiet bus would cost more than everything else the probe does there.
    poll_s = 3600.0

    def __init__(self, cfg: Config, specs: list[SensorSpec], ctx: ProbeContext) -> None:
        super().__init__(ctx)
        self.cfg = cfg
        self.clock = ctx.clock
        self.out: list[Record] = []
        now = self.clock.mono()
        self.buses: list[Bus] = []
        for b in cfg.bus:
            mons = [SensorMonitor(s, self.rec, self.out, now, cfg.max_examples) for s in specs if s.bus == b.name]
            self.buses.append(make_bus(b, BusMonitor(b.name, b.bitrate, self.rec, self.out, now), mons))
        self.read_interval = min(cfg.read_interval_ms / 1000, self._safe_interval(specs))
        self.window_start = now
        self._busy = False
        self._poller: Any = None
        self._wake_r = self._wake_w = -1  # self-pipe: stop() interrupts poll() through it

    @staticmethod
    def _safe_interval(specs: list[SensorSpec]) -> float:
        """Longest batching interval the socket buffers surely absorb: at most ~SAFE_BATCH frames of the
        busiest bus's monitored ids queue between two reads (a default receive buffer holds ~200)."""
        per_bus: dict[str, float] = {}
        for s in specs:
            if s.mode == "raw":
                per_bus[s.bus] = per_bus.get(s.bus, 0.0) + 1 / s.cycle_s
        fps = max(per_bus.values(), default=0.0)
        return SAFE_BATCH / fps if fps else float("inf")

    # ------------------------------------------------------------------------------------- lifecycle
    def open(self) -> None:
        now = self.clock.mono()
        for b in self.buses:
            if not b.is_open:
                self._try_open(b, now)
        if not any(b.is_open for b in self.buses):
            raise ProbeError("no CAN bus could be opened: " + "; ".join(f"{b.name}: {b.error}" for b in self.buses))
        self._rebuild_poller()

    def _try_open(self, b: Bus, now: float) -> None:
        try:
            b.open(now, self.cfg.allow_transmit)
        except Exception as e:  # noqa: BLE001 - python-can and the kernel fail in many ways; one bus must not stop the rest
            b.close()
            b.failures += 1
            msg = f"{type(e).__name__}: {e}"
            if msg != b.error:
                self.log.warning("CAN bus %s (%s %s) cannot be opened: %s", b.name, b.cfg.interface,
                                 b.cfg.ifname, msg)
            b.error = msg
            b.retry_at = now + min(RETRY_MAX_S, RETRY_MIN_S * 2 ** min(b.failures - 1, 6))
            self.counters.inc("bus_open_failures")
            return
        if b.error:
            self.log.info("CAN bus %s open again", b.name)
        b.error, b.failures = "", 0
        for s in b.sensors:
            s.restart(now)  # time spent unable to read is not the sensors' silence

    def _fail(self, b: Bus, e: OSError, now: float) -> None:
        self.log.warning("CAN bus %s read failed, reopening: %s", b.name, e)
        b.close()
        b.error = f"{type(e).__name__}: {e}"
        b.failures += 1
        b.retry_at = now + RETRY_MIN_S
        self.counters.inc("bus_read_failures")
        self._rebuild_poller()

    def _rebuild_poller(self) -> None:
        if self._wake_r < 0:
            self._wake_r, self._wake_w = os.pipe()
            os.set_blocking(self._wake_r, False)
        p = select.poll()
        p.register(self._wake_r, select.POLLIN)
        for b in self.buses:
            if b.is_open:
                for fd in b.fds():
                    p.register(fd, select.POLLIN)
        self._poller = p

    def close(self) -> None:
        for b in self.buses:
            b.close()

    def _wakeup(self) -> None:
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass

    def stop(self, timeout_s: float = 3.0) -> None:
        super().stop(timeout_s)
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                os.close(fd)
        self._wake_r = self._wake_w = -1
        now = self.clock.mono()
        for b in self.buses:
            b.monitor.end_all(now)
            for s in b.sensors:
                s.end_all(now)
        out = list(self.out)
        self.out.clear()
        self.emit_all(out)

    # ------------------------------------------------------------------------------------------ loop
    def _next_deadline(self, now: float) -> float:
        d = self.window_start + self.cfg.interval_s
        for b in self.buses:
            if not b.is_open:
                d = min(d, b.retry_at)
                continue
            for s in b.sensors:
                sd = s.deadline()
                if sd is not None and sd < d:
                    d = sd
        return d

    def receive(self, timeout_s: float) -> Iterable[Record]:
        c = self.clock
        pycan = any(b.is_open and not isinstance(b, SocketCanBus) for b in self.buses)
        if self._busy and self.read_interval > 0:
            # Frames are flowing: let them queue in the socket for one interval and read them in one go.
            self._stop.wait(self.read_interval)
        else:
            now = c.mono()
            wait = max(0.0, min(timeout_s, self._next_deadline(now) - now + 0.001))
            if pycan:
                wait = min(wait, max(self.read_interval, 0.005))
            if self._poller is not None and not pycan:
                self._poller.poll(wait * 1000)
            else:
                self._stop.wait(wait)
        if self._stop.is_set():
            return []
        now = c.mono()
        off = now - c.wall()  # kernel timestamps are CLOCK_REALTIME; monitors work in monotonic time
        n = 0
        for b in self.buses:
            if b.is_open:
                try:
                    n += b.drain(now, off)
                except OSError as e:
                    self._fail(b, e, now)
        self._busy = n > 0
        for b in self.buses:
            if b.is_open:
                for s in b.sensors:
                    s.check_timeout(now)
                if isinstance(b, SocketCanBus):
                    b.poll_link(now, self.cfg.link_poll_s)
            elif now >= b.retry_at:
                self._try_open(b, now)
                if b.is_open:
                    self._rebuild_poller()
        if now - self.window_start >= self.cfg.interval_s:
            self._close_window(now)
        out = list(self.out)
        self.out.clear()
        return out

    def _close_window(self, now: float) -> None:
        span = now - self.window_start
        for b in self.buses:
            if b.is_open:
                b.poll(now)
            b.monitor.close_window(now, b.counted)
            for s in b.sensors:
                for k, v in s.close_window(span).items():
                    if v:
                        self.counters.inc(k, v)
        self.window_start = now

    # --------------------------------------------------------------------------------------- status
    def extra_status(self) -> dict[str, Any]:
        return {"buses": {b.name: {"open": b.is_open, "error": b.error, "reader": b.reader_kind(),
                                   "controller": b.monitor.state, "drops": b.monitor.drops,
                                   "frames_read": b.frames_read} for b in self.buses}}

    def active_episodes(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for b in self.buses:
            out += b.monitor.episodes()
            for s in b.sensors:
                out += s.episodes()
        return out
