"""Per-sensor state: what the hot path updates per frame and what becomes records.

Monitors hold state and turn rule verdicts (rules.py, e2e.py) into records; they never read a clock or a
socket. Times are boot-relative monotonic seconds handed in by the probe. Records go to a shared `out` list
that the probe hands to the pipeline after each read round.
"""

from __future__ import annotations

import logging
from typing import Any

from ...records import Record, RecordFactory
from .e2e import check as e2e_check
from .e2e import compile_check
from .rules import counter_verdict, jitter_ms, missed_cycles
from .spec import SensorSpec, StatusSpec

log = logging.getLogger("icvq.probe.can")
MAX_PERIODS = 20_000  # per window: enough for p99 at 1 kHz over 20 s; beyond that the window's tail is dropped


class _Status:
    """Assertion state of one status signal (debounced)."""

    __slots__ = ("active", "episode", "pending", "since", "spec", "value")

    def __init__(self, spec: StatusSpec) -> None:
        self.spec = spec
        self.active = False
        self.pending = 0
        self.episode: int | None = None
        self.since = 0.0
        self.value: int | float = 0


class SensorMonitor:
    def __init__(self, spec: SensorSpec, rec: RecordFactory, out: list[Record], now: float,
                 max_examples: int = 3) -> None:
        self.spec = spec
        self.rec = rec
        self.out = out
        self.max_examples = max_examples
        self.cycle = spec.cycle_s
        self.timeout = spec.timeout_s
        self._miss_after = 1.5 * spec.cycle_s
        self._e2e = spec.e2e
        self._check = compile_check(spec.e2e, spec.length) if spec.e2e else None
        self._counter = spec.counter
        self._modulo = spec.counter_modulo or (spec.e2e.counter_modulo if spec.e2e else 0)
        self._len = spec.length
        self._min_len = spec.min_length
        # The counter as (shift, mask) on the little-endian payload integer, when that is fixed.
        c = spec.counter
        self._ctr_le: tuple[int, int] | None = None
        if c is not None and c.little_endian and not c.signed:
            self._ctr_le = (c.start, (1 << c.length) - 1)
        self._status = [_Status(s) for s in spec.status]
        nbytes = spec.length or 64
        mask = 0
        for s in spec.status:
            try:
                mask |= int.from_bytes(s.field.mask(nbytes), "little")
            except ValueError:
                mask = -1  # a field that only fits longer frames: compare whole payloads
        # Status signals are evaluated only when their bits change (userspace RX_CHANGED), or while a
        # debounce is pending.
        self._status_mask = mask if spec.length and mask != -1 else -1
        self._status_bits: int | None = None
        self._pending = False
        self._base = {"bus": spec.bus, "sensor": spec.name, "id": spec.id_text}
        self.last: float | None = None
        self.since = now  # reference for "never seen" until the first frame
        self.timeout_episode: int | None = None
        self.silent_since = 0.0
        self.prev_counter: int | None = None
        self.total_frames = 0
        self._kernel_base = 0  # BCM: the kernel's frame count of this id at the last read
        self._new_window()

    def _new_window(self) -> None:
        self.frames = 0
        # What `frames` counts: frames read (raw), frames the kernel's BCM received (bcm_counts.py, read when
        # the window closes), or "unknown" when that count was not readable (then `frames` is null).
        self.frames_source = "unknown" if self.spec.mode == "bcm" else "read"
        self.changes = 0
        self.periods: list[float] = []
        self.missed = 0
        self.bad_length = 0
        self.fd_frames = 0
        self.timeouts = 0
        self.repeats = 0
        self.jumps = 0
        self.lost = 0
        self.counter_examples: list[dict[str, Any]] = []
        self.crc_failures = 0
        self.crc_examples: list[dict[str, Any]] = []

    # ---------------------------------------------------------------------------------- hot path
    def on_frame(self, t: float, data: bytes) -> None:
        """One received frame of this sensor (raw mode): timing, then content checks."""
        self.on_frames([(t, data)])

    def on_frames(self, batch: list[tuple[float, bytes]], timing: bool = True) -> None:
        """The frames of this sensor from one read round, oldest first. This is the agent's only per-frame
        Python code, so it keeps everything in locals: in CPython a loop this small otherwise spends most of
        its time on attribute lookups and calls. `timing` is False for BCM notifications, which are changes,
        not cycles."""
        if not batch:
            return
        if timing:
            self.frames += len(batch)
        last = self.last if timing else None
        if self.timeout_episode is not None:
            self._resume(batch[0][0])  # the silence is the timeout's figure, not cycle jitter
            last = None
        miss_after, periods = self._miss_after, self.periods
        room = MAX_PERIODS - len(periods)
        length, min_len, chk, mod = self._len, self._min_len, self._check, self._modulo
        counter, le = self._counter, self._ctr_le
        prev = self.prev_counter
        status, smask, sbits = bool(self._status), self._status_mask, self._status_bits
        for t, data in batch:
            if last is not None:
                dt = t - last
                if dt > miss_after:
                    self.missed += missed_cycles(dt, self.cycle)
                if room > 0:
                    periods.append(dt)
                    room -= 1
            if timing:
                last = t
            n = len(data)
            if n != length and (length or n < min_len):
                self.bad_length += 1
                continue
            ctr = -1
            if chk is not None:
                ctr = chk(data)
                if ctr < 0:
                    self._crc_failure(t, data)
                    prev = None  # resynchronise on the next valid frame: one fault, one count
                    continue
            if counter is not None:
                ctr = (int.from_bytes(data, "little") >> le[0]) & le[1] if le else counter.raw(data)
            if ctr >= 0:
                if prev is not None and (ctr >= mod or (ctr - prev) % mod != 1):
                    verdict, lost = counter_verdict(prev, ctr, mod)
                    self._counter_issue(t, verdict, lost, prev, ctr)
                prev = ctr
            if status:
                bits = int.from_bytes(data, "little") & smask
                if bits != sbits or self._pending:
                    sbits = self._status_bits = bits
                    self._evaluate_status(t, data)
        self.last = last if timing else batch[-1][0]
        self.prev_counter = prev
        self._status_bits = sbits

    # ------------------------------------------------------------------------------- kernel (BCM)
    def on_changed(self, t: float, data: bytes) -> None:
        """BCM RX_CHANGED: first frame, masked content or length changed, or the frame after a timeout."""
        self.changes += 1
        self.on_frames([(t, data)], timing=False)

    def kernel_count_reset(self) -> None:
        """A new BCM receive operation was set up: the kernel's count starts again at 0."""
        self._kernel_base = 0

    def on_kernel_count(self, total: int | None) -> None:
        """The kernel's cumulative frame count for this id (None: not readable). The window gets what arrived
        since the last read; a count that went backwards means a new operation, counting from 0."""
        if total is None:
            self.frames_source = "unknown"
            return
        self.frames += total - self._kernel_base if total >= self._kernel_base else total
        self._kernel_base = total
        self.frames_source = "kernel_bcm"

    def on_kernel_timeout(self, t: float) -> None:
        """BCM RX_TIMEOUT: the kernel's timer ran out `timeout` after the last frame."""
        if self.timeout_episode is None:
            ref = self.last if self.last is not None else self.since
            self._begin_timeout(t, max(ref, t - self.timeout))

    # ------------------------------------------------------------------------------------ timeouts
    def deadline(self) -> float | None:
        """When the sensor times out if nothing arrives; None while a timeout is already open or the
        kernel supervises (BCM)."""
        if self.timeout_episode is not None or self.spec.mode == "bcm":
            return None
        return (self.last if self.last is not None else self.since) + self.timeout

    def check_timeout(self, now: float) -> None:
        d = self.deadline()
        if d is not None and now > d:
            self._begin_timeout(now, self.last if self.last is not None else self.since)

    def restart(self, now: float) -> None:
        """The bus was unreadable for a while (our problem, not the sensor's): start timing afresh."""
        if self.timeout_episode is None:
            self.last = None
            self.since = now
        self.prev_counter = None

    def _begin_timeout(self, now: float, silent_since: float) -> None:
        self.silent_since = silent_since
        self.timeouts += 1
        self.prev_counter = None  # the counter restarts or jumps after silence; that is not a counter fault
        never = self.last is None
        rec = self.rec.begin("can.timeout", {**self._base, "cycle_ms": round(self.cycle * 1000, 3),
                                             "timeout_ms": round(self.timeout * 1000, 3),
                                             "silent_s": round(now - silent_since, 3), "never_seen": never})
        self.timeout_episode = rec.episode
        self.out.append(rec)
        log.info("CAN sensor %s (%s on %s) silent for %.2f s%s", self.spec.name, self.spec.id_text,
                 self.spec.bus, now - silent_since, " (never seen)" if never else "")

    def _resume(self, t: float) -> None:
        ep = self.timeout_episode
        assert ep is not None
        duration = max(0.0, t - self.silent_since)
        self.missed += missed_cycles(duration, self.cycle)
        self.out.append(self.rec.end("can.timeout", ep, {**self._base, "duration_s": round(duration, 3),
                                                         "missed_cycles": missed_cycles(duration, self.cycle),
                                                         "ended_by": "recovered"}))
        self.timeout_episode = None
        log.info("CAN sensor %s back after %.2f s", self.spec.name, duration)

    def end_all(self, now: float) -> None:
        """The agent stops or reloads: close open episodes so the backend is not left with a BEGIN alone; a
        condition that persists begins a new episode when the probe runs again."""
        if self.timeout_episode is not None:
            self.out.append(self.rec.end("can.timeout", self.timeout_episode, {
                **self._base, "duration_s": round(max(0.0, now - self.silent_since), 3), "ended_by": "agent_stop"}))
            self.timeout_episode = None
        for st in self._status:
            if st.episode is not None:
                self.out.append(self.rec.end("sensor.fault", st.episode, {
                    **self._base, "signal": st.spec.name, "value": st.value, "cause": st.spec.cause,
                    "duration_s": round(max(0.0, now - st.since), 3), "ended_by": "agent_stop"}))
                st.active, st.episode = False, None

    # ------------------------------------------------------------------------------------- content
    def _wall(self, t: float) -> float:
        c = self.rec.clock
        return round(c.wall() - (c.mono() - t), 3)

    def _counter_issue(self, t: float, verdict: str, lost: int, prev: int, cur: int) -> None:
        if verdict == "repeat":
            self.repeats += 1
        else:
            self.jumps += 1
            self.lost += lost
        if len(self.counter_examples) < self.max_examples:
            self.counter_examples.append({"at": self._wall(t), "kind": verdict, "prev": prev, "cur": cur})

    def _crc_failure(self, t: float, data: bytes) -> None:
        self.crc_failures += 1
        if len(self.crc_examples) < self.max_examples and self._e2e is not None:
            v = e2e_check(self._e2e, data)  # the reference implementation explains what was wrong
            self.crc_examples.append({"at": self._wall(t), "data": bytes(data).hex(), "received": v.received,
                                      "computed": v.computed, "counter": v.counter})

    def _evaluate_status(self, t: float, data: bytes) -> None:
        pending = False
        for st in self._status:
            f = st.spec.field
            value = f.value(data)
            bad = st.spec.condition.holds(value)
            if bad == st.active:
                st.pending = 0
                st.value = value
                continue
            st.pending += 1
            if st.pending < st.spec.debounce:
                pending = True
                continue
            st.pending = 0
            st.value = value
            fields = {**self._base, "signal": st.spec.name, "value": value, "label": f.label(f.raw(data)),
                      "cause": st.spec.cause}
            if bad:
                rec = self.rec.begin("sensor.fault", {**fields, "condition": st.spec.condition.text,
                                                      "vss": st.spec.vss})
                st.active, st.episode, st.since = True, rec.episode, t
                log.info("sensor %s: %s = %s (%s) asserts a fault", self.spec.name, st.spec.name, value,
                         st.spec.condition.text)
            else:
                assert st.episode is not None
                rec = self.rec.end("sensor.fault", st.episode, {**fields, "duration_s": round(t - st.since, 3),
                                                               "ended_by": "recovered"})
                st.active, st.episode = False, None
                log.info("sensor %s: %s = %s, fault cleared", self.spec.name, st.spec.name, value)
            self.out.append(rec)
        self._pending = pending

    def on_fd_frame(self) -> None:
        """A CAN FD frame with this id on a classic bus: counted, never decoded."""
        self.fd_frames += 1

    # -------------------------------------------------------------------------------------- window
    def close_window(self, window_s: float) -> dict[str, int]:
        """Emit the window's metric and any counter/CRC findings; returns counts for the probe's counters."""
        base = self._base
        frames = None if self.frames_source == "unknown" else self.frames
        m: dict[str, Any] = {**base, "mode": self.spec.mode, "frames": frames, "frames_source": self.frames_source,
                             "missed": self.missed,
                             "bad_length": self.bad_length, "fd_frames": self.fd_frames, "timeouts": self.timeouts,
                             "silent": self.timeout_episode is not None, "cycle_ms": round(self.cycle * 1000, 3)}
        if self.spec.mode == "bcm":
            m["changes"] = self.changes
        else:
            m.update(jitter_ms(self.periods, self.cycle))
        if self._e2e is not None:
            m["crc_failures"] = self.crc_failures
        if self._modulo:
            m["counter_errors"] = self.repeats + self.jumps
        self.out.append(self.rec.metric("can.sensor", m))
        if self.repeats or self.jumps:
            self.out.append(self.rec.event("can.counter", {
                **base, "window_s": round(window_s, 3), "frames": self.frames, "repeats": self.repeats,
                "jumps": self.jumps, "lost": self.lost, "examples": self.counter_examples}))
        if self.crc_failures:
            assert self._e2e is not None
            self.out.append(self.rec.event("can.crc", {
                **base, "profile": self._e2e.profile, "window_s": round(window_s, 3), "frames": self.frames,
                "failures": self.crc_failures, "examples": self.crc_examples}))
        counts = {"frames": self.frames, "bad_length": self.bad_length, "fd_on_classic": self.fd_frames,
                  "counter_errors": self.repeats + self.jumps, "crc_failures": self.crc_failures}
        self.total_frames += self.frames
        self._new_window()
        return counts

    def episodes(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self.timeout_episode is not None:
            out.append({"name": "can.timeout", "episode": self.timeout_episode, **self._base})
        out += [{"name": "sensor.fault", "episode": st.episode, **self._base, "signal": st.spec.name}
                for st in self._status if st.episode is not None]
        return out
