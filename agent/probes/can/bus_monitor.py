"""Per-bus state: controller state from error frames and `ip link`, error classes, traffic per window."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from ...records import Record, RecordFactory
from .rules import bus_load_pct, bus_state_changes, decode_error_frame

log = logging.getLogger("icvq.probe.can")


class BusMonitor:
    """Controller state (from error frames and `ip link`), error frame classes and traffic per window."""

    def __init__(self, name: str, bitrate: int, rec: RecordFactory, out: list[Record], now: float) -> None:
        self.name = name
        self.bitrate = bitrate
        self.rec = rec
        self.out = out
        self.state = "unknown"
        self.state_source = ""
        self.open_episodes: dict[str, tuple[int, float]] = {}
        self.tec: int | None = None
        self.rec_counter: int | None = None
        self.drops = 0  # frames the kernel dropped on our socket (cumulative, SO_RXQ_OVFL)
        self.other_frames = 0
        self._cum: tuple[int, int, float] | None = None  # latest interface counters: frames, bytes, when
        self._base_cum: tuple[int, int, float] | None = None  # the same at the start of the window
        self._new_window(now)

    def _new_window(self, now: float) -> None:
        self.window_start = now
        self.err_frames = 0
        self.err_classes: Counter[str] = Counter()
        self.frames_counted = 0
        self.bytes_counted = 0

    def on_error_frame(self, t: float, can_id: int, data: bytes) -> None:
        ef = decode_error_frame(can_id, data)
        self.err_frames += 1
        self.err_classes.update(ef.classes)
        if ef.tec is not None:
            self.tec, self.rec_counter = ef.tec, ef.rec
        if ef.state:
            self.set_state(ef.state, t, "error_frame")

    def set_state(self, new: str, t: float, source: str) -> None:
        old = self.state
        if new == old:
            return
        self.state, self.state_source = new, source
        for edge, name in bus_state_changes(old, new):
            if edge == "begin":
                r = self.rec.begin(name, {"bus": self.name, "source": source, "from": old,
                                          "tec": self.tec, "rec": self.rec_counter})
                assert r.episode is not None
                self.open_episodes[name] = (r.episode, t)
            elif name in self.open_episodes:
                ep, since = self.open_episodes.pop(name)
                r = self.rec.end(name, ep, {"bus": self.name, "source": source, "to": new,
                                            "duration_s": round(max(0.0, t - since), 3), "ended_by": "recovered"})
            else:
                continue
            self.out.append(r)
        if old != "unknown" or new != "active":
            log.info("CAN bus %s: controller %s -> %s (%s)", self.name, old, new, source)

    def end_all(self, now: float) -> None:
        for name, (ep, since) in self.open_episodes.items():
            self.out.append(self.rec.end(name, ep, {"bus": self.name, "duration_s": round(max(0.0, now - since), 3),
                                                    "ended_by": "agent_stop"}))
        self.open_episodes.clear()
        self.state = "unknown"

    def count(self, frames: int, nbytes: int) -> None:
        """Frames seen in userspace (python-can buses, where nothing filters before us)."""
        self.frames_counted += frames
        self.bytes_counted += nbytes

    def traffic(self, frames_total: int, bytes_total: int, now: float) -> None:
        """Cumulative interface counters (socketcan: the kernel counts every frame, we read none of them)."""
        self._cum = (frames_total, bytes_total, now)
        if self._base_cum is None:
            self._base_cum = self._cum

    def close_window(self, now: float, counted: bool) -> None:
        span = max(1e-6, now - self.window_start)
        frames = nbytes = -1
        load_span = span
        if counted:
            frames, nbytes = self.frames_counted, self.bytes_counted
        elif self._cum and self._base_cum and self._cum[2] > self._base_cum[2]:
            # Counters restart when an interface is recreated: a negative delta is a restart, not traffic.
            frames = max(0, self._cum[0] - self._base_cum[0])
            nbytes = max(0, self._cum[1] - self._base_cum[1])
            load_span = self._cum[2] - self._base_cum[2]
            self._base_cum = self._cum
        m: dict[str, Any] = {"bus": self.name, "state": self.state, "err_frames": self.err_frames,
                             "drops": self.drops}
        if frames >= 0:
            m["frames_s"] = round(frames / load_span, 1)
            m["load_pct"] = bus_load_pct(frames, nbytes, load_span, self.bitrate)
        if self.tec is not None:
            m["tec"], m["rec"] = self.tec, self.rec_counter
        if counted:
            m["other_frames"] = self.other_frames
        self.out.append(self.rec.metric("can.bus", m))
        if self.err_frames:
            self.out.append(self.rec.event("can.error", {"bus": self.name, "window_s": round(span, 3),
                                                         "frames": self.err_frames,
                                                         "classes": dict(self.err_classes),
                                                         "state": self.state}))
        self.other_frames = 0
        self._new_window(now)

    def episodes(self) -> list[dict[str, Any]]:
        return [{"name": n, "episode": ep, "bus": self.name} for n, (ep, _) in self.open_episodes.items()]
