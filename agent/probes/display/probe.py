"""DisplayProbe: one thread reads every display signal the unit has and feeds the pure rules.

One thread on purpose: the signals are slow (a few samples or datagrams a second), the rules need them all at
once, and a head unit has two to four cores that belong to the HMI. Each source (framebuffer, kmsg, heartbeat
socket, each input device) may be missing or fail on its own; it is logged once, counted, retried every
`source_retry_s`, and the others go on.
"""

from __future__ import annotations

import select
import time
from collections.abc import Iterable
from typing import Any

import psutil

from ...dataclass_shared import dataclass
from ...probe import ProbeContext, StreamProbe
from ...records import Record
from .drm_source import KmsWatch, ScanoutClient
from .episodes import EpisodeMachine, Transition
from .evdev import EvdevReader, is_press
from .frame_state import FrameSource, FrameTracker
from .framebuffer import FrameReader, Rect
from .heartbeat import HeartbeatSocket, HeartbeatState, parse_heartbeat
from .hmi_process import NOT_RUNNING, ProcessWatch
from .kmsg import KmsgReader, KmsgRecord
from .patterns import HangMatch, compile_patterns, match_line
from .rules import (
    BacklightSignal,
    ConnectorSignal,
    GpuHangSignal,
    InputTracker,
    ProcessSignal,
    Signals,
    Thresholds,
    Verdict,
    black_explanation,
    judge,
    problems,
)
from .settings import Config
from .sysfs import SysfsReader

MAX_LINE = 512  # characters of a kernel log line kept in an event


@dataclass
class _Source:
    """One input that can be absent now and come back later (HMI restart, hot-plugged touch controller)."""

    name: str
    up: bool = False
    retry_at: float = 0.0
    error: str = ""
    down_since: float = 0.0  # wall clock, like the probe's own state (the health verdict's "since")


class DisplayProbe(StreamProbe):
    name = "display"

    def __init__(self, cfg: Config, ctx: ProbeContext) -> None:
        super().__init__(ctx)
        self.cfg = cfg
        self.clock = ctx.clock
        self.poll_s = min(0.5, cfg.fb_interval_s)
        self.th = Thresholds(heartbeat_timeout_s=cfg.heartbeat_timeout_s, input_timeout_s=cfg.input_timeout_s,
                             input_presses=cfg.input_presses, black_min_s=cfg.black_min_s,
                             gpu_hang_window_s=cfg.gpu_hang_window_s, screen_expected_on=cfg.screen_expected_on)
        self.patterns = compile_patterns((p.driver, p.name, p.regex) for p in cfg.extra_patterns)
        rects = tuple(Rect(r.x, r.y, r.width, r.height) for r in cfg.regions)
        self.frames: FrameSource | None = None
        if cfg.fb_path:
            self.frames = FrameReader(
                cfg.fb_path, fmt=cfg.fb_format, sysfs_root=cfg.sysfs_root, grid_cols=cfg.grid_cols,
                grid_rows=cfg.grid_rows, black_level=cfg.black_level, black_fraction=cfg.black_fraction,
                regions=rects)
        elif cfg.drm_sampler_socket:
            self.frames = ScanoutClient(cfg.drm_sampler_socket, grid_cols=cfg.grid_cols, grid_rows=cfg.grid_rows,
                                        black_level=cfg.black_level, black_fraction=cfg.black_fraction,
                                        regions=rects)
        self.fb = FrameTracker(self.frames, cfg.regions, cfg.fb_interval_s, lit_limit=1.0 - cfg.black_fraction) \
            if self.frames else None
        self.kms = KmsWatch(cfg.drm_card) if cfg.drm_card else None
        self.kmsg = KmsgReader(cfg.kmsg_path, from_start=cfg.kmsg_from_start) if cfg.kmsg_path else None
        self.hb_sock = HeartbeatSocket(cfg.heartbeat_socket, cfg.heartbeat_socket_mode) \
            if cfg.heartbeat_socket else None
        self.inputs = {p: EvdevReader(p) for p in cfg.input_devices}
        self.sysfs = SysfsReader(cfg.sysfs_root, cfg.backlight, cfg.connector) \
            if (cfg.backlight or cfg.connector) else None
        self.procs = ProcessWatch(cfg.hmi_processes, cpu_pegged_pct=cfg.cpu_pegged_pct,
                                  cpu_pegged_s=cfg.cpu_pegged_s, d_state_s=cfg.d_state_s) \
            if cfg.hmi_processes else None

        self.sources: dict[str, _Source] = {}
        if self.frames:
            self.sources["framebuffer"] = _Source("framebuffer")
        if self.kms:
            self.sources["drm"] = _Source("drm")
        if self.kmsg:
            self.sources["kmsg"] = _Source("kmsg")
        if self.hb_sock:
            self.sources["heartbeat"] = _Source("heartbeat")
        for p in self.inputs:
            self.sources[f"input:{p}"] = _Source(f"input:{p}")

        self.freeze = EpisodeMachine("display.freeze")
        self.black = EpisodeMachine("display.black", black_explanation)
        self.hb = HeartbeatState()
        self.input = InputTracker()
        # sysfs, process and kernel state.
        self._bl_state: dict[str, tuple[str, float]] = {}
        self._conn_state: dict[str, tuple[bool, float]] = {}
        self._backlights: tuple[BacklightSignal, ...] = ()
        self._connectors: tuple[ConnectorSignal, ...] = ()
        self._processes: tuple[ProcessSignal, ...] = ()
        self._proc_seen: set[str] = set()
        self._proc_state: dict[str, str] = {}
        self._gpu_hang: GpuHangSignal | None = None
        self._hang_last: dict[tuple[str, str], float] = {}
        self._hang_repeats: dict[tuple[str, str], int] = {}
        self._onsets: set[str] = set()
        self._kmsg_seen = {"lost": 0, "overruns": 0, "malformed": 0, "seq_resets": 0}
        self._sysfs_malformed = 0
        # Schedule and the metrics window.
        now = self.clock.mono()
        self._next = {"fb": now, "sysfs": now, "proc": now, "flip": now, "metrics": now + cfg.metrics_interval_s}
        self._kms_conn_state: dict[str, tuple[bool, float]] = {}
        self._kms_connectors: tuple[ConnectorSignal, ...] = ()
        self._win_start = now
        self._win_frames = 0

    # -- StreamProbe ----------------------------------------------------------------------------------
    def open(self) -> None:
        self._reopen(self.clock.mono(), force=True)

    def receive(self, timeout_s: float) -> Iterable[Record]:
        now = self.clock.mono()
        wait = max(0.0, min(timeout_s, min(self._due()) - now))
        fds = self._fds()
        if fds:
            try:
                select.select(fds, [], [], wait)
            except (InterruptedError, ValueError, OSError):
                pass  # a source closed under us: the read below reports it
        else:
            self._stop.wait(wait)
        return self.tick()

    def close(self) -> None:
        if self.kmsg:
            self.kmsg.close()
        if self.hb_sock:
            self.hb_sock.close()
        for r in self.inputs.values():
            r.close()
        if self.frames:
            self.frames.close()
        if self.kms:
            self.kms.close()
        for s in self.sources.values():
            s.up = False

    def stop(self, timeout_s: float = 3.0) -> None:
        super().stop(timeout_s)
        # An episode still open when the agent stops gets its END, so the backend never holds a dangling BEGIN.
        self.emit_all(self.end_all("agent_stop"))

    def status(self) -> dict[str, Any]:
        """A configured source that cannot be read is a blind spot (a sampler without its capability, a card
        gone, a heartbeat socket in the way): the probe runs on, but says `degraded`, so the health verdict and
        `icvq status` show it instead of "display ok"."""
        out = super().status()
        down = [(n, s) for n, s in self.sources.items() if not s.up and s.error]
        if out["state"] in ("starting", "ok") and down:
            out["state"] = "degraded"
            out["last_error"] = "; ".join(f"source {n} down: {s.error}" for n, s in down)
            out["since"] = min(s.down_since for _, s in down)
        return out

    def extra_status(self) -> dict[str, Any]:
        layout = self.frames.layout if self.frames else None
        out = {"sources": {n: ("up" if s.up else f"down: {s.error}") for n, s in self.sources.items()},
               "framebuffer": f"{layout.kind} {layout.width}x{layout.height} {layout.bits_per_pixel}bpp"
               if layout else "",
               "hmi": dict(self._proc_state)}
        if self.kms:
            out["drm"] = {"plane": self.kms.plane_id, "fb_id": self.kms.fb_id}
        return out

    # -- one turn of the loop -------------------------------------------------------------------------
    def tick(self) -> list[Record]:
        """Read what is available, run what is due, evaluate the rules. Tests call this with a FakeClock."""
        now = self.clock.mono()
        out: list[Record] = []
        self._reopen(now)
        self._read_streams(now, out)
        if self.kms and self.sources["drm"].up and now >= self._next["flip"]:
            self._next["flip"] = max(self._next["flip"] + self.cfg.drm_flip_poll_s, now)
            self._poll_kms(now, flip=True, state=self.sysfs is None and now >= self._next["sysfs"])
        if self.frames and now >= self._next["fb"]:
            self._next["fb"] = max(self._next["fb"] + self.cfg.fb_interval_s, now)
            self._sample_fb(now)
        if self.sysfs and now >= self._next["sysfs"]:
            self._next["sysfs"] = max(self._next["sysfs"] + self.cfg.sysfs_interval_s, now)
            self._read_sysfs(now)
        if self.procs and now >= self._next["proc"]:
            self._next["proc"] = max(self._next["proc"] + self.cfg.process_interval_s, now)
            self._poll_procs(now)
        self._evaluate(now, out)
        self.ctx.context("display", self._context(now))
        if now >= self._next["metrics"]:
            self._next["metrics"] = max(self._next["metrics"] + self.cfg.metrics_interval_s, now)
            out.extend(self._metrics(now))
        return out

    def end_all(self, ended_by: str) -> list[Record]:
        now, wall = self.clock.mono(), self.clock.wall()
        out = []
        for m in (self.freeze, self.black):
            t = m.close(now, wall, ended_by)
            if t:
                out.append(self._record(m, t))
        return out

    def _due(self) -> list[float]:
        due = [self._next["metrics"]]
        if self.frames:
            due.append(self._next["fb"])
        if self.sysfs:
            due.append(self._next["sysfs"])
        if self.kms:
            due.append(self._next["flip"])
        if self.procs:
            due.append(self._next["proc"])
        return due

    def _fds(self) -> list[int]:
        fds = []
        if self.kmsg and self.kmsg.stream and self.kmsg.stream.selectable:
            fds.append(self.kmsg.stream.fd)
        if self.hb_sock and self.hb_sock.sock:
            fds.append(self.hb_sock.fileno())
        fds += [r.fileno() for r in self.inputs.values() if r.stream and r.stream.selectable]
        return fds

    # -- sources --------------------------------------------------------------------------------------
    def _source_up(self, name: str) -> None:
        s = self.sources[name]
        if not s.up:
            self.log.info("display source %s up", name)
        s.up, s.error = True, ""

    def _source_down(self, name: str, now: float, error: str, counter: str) -> None:
        s = self.sources[name]
        if s.up or s.error != error:
            self.log.warning("display source %s unavailable: %s", name, error)
            self.counters.inc(counter)
        if s.up or not s.error:
            s.down_since = time.time()
        s.up, s.error, s.retry_at = False, error, now + self.cfg.source_retry_s

    def _reopen(self, now: float, force: bool = False) -> None:
        openers: list[tuple[str, Any]] = []
        if self.kms:
            openers.append(("drm", self.kms))
        if self.kmsg:
            openers.append(("kmsg", self.kmsg))
        if self.hb_sock:
            openers.append(("heartbeat", self.hb_sock))
        openers += [(f"input:{p}", r) for p, r in self.inputs.items()]
        for name, src in openers:
            s = self.sources[name]
            if s.up or (not force and now < s.retry_at):
                continue
            try:
                src.open()
            except OSError as e:
                self._source_down(name, now, f"{type(e).__name__}: {e.strerror or e}",
                                  f"{name.split(':')[0]}_open_failed")
                continue
            self._source_up(name)

    def _read_streams(self, now: float, out: list[Record]) -> None:
        if self.kmsg and self.sources["kmsg"].up:
            try:
                records = self.kmsg.read()
            except OSError as e:
                self.kmsg.close()
                self._source_down("kmsg", now, f"read: {e.strerror or e}", "kmsg_read_failed")
                records = []
            self._kmsg_counters()
            for r in records:
                self.ctx.context("kmsg", {"lvl": r.level, "msg": r.text})  # every level; the ring rate-limits
                m = match_line(self.patterns, r.text)
                if m:
                    self._on_gpu_hang(m, r, now, out)
        if self.hb_sock and self.sources["heartbeat"].up:
            for payload in self.hb_sock.receive():
                self._heartbeat(payload, now)
        for path, reader in self.inputs.items():
            name = f"input:{path}"
            if not self.sources[name].up:
                continue
            try:
                events = reader.read()
            except OSError as e:  # ENODEV: the controller went away (reset, unplugged)
                reader.close()
                self._source_down(name, now, f"read: {e.strerror or e}", "input_read_failed")
                continue
            for ev in events:
                if is_press(ev, self.cfg.input_codes):
                    self._press(now)

    def _kmsg_counters(self) -> None:
        assert self.kmsg
        for key, counter in (("lost", "kmsg_lost"), ("overruns", "kmsg_overruns"),
                             ("malformed", "malformed_kmsg"), ("seq_resets", "kmsg_seq_resets")):
            value = getattr(self.kmsg, key)
            if value != self._kmsg_seen[key]:
                self.counters.inc(counter, value - self._kmsg_seen[key])
                self._kmsg_seen[key] = value

    def _on_gpu_hang(self, m: HangMatch, r: KmsgRecord, now: float, out: list[Record]) -> None:
        key = (m.driver, m.pattern)
        self.counters.inc("gpu_hang_lines")
        self._gpu_hang = GpuHangSignal(now, m.driver, m.pattern, m.line[:MAX_LINE])
        last = self._hang_last.get(key)
        if last is not None and now - last < self.cfg.gpu_hang_dedupe_s:
            # A hung GPU repeats itself; one event per burst, with the repeat count on the next one.
            self._hang_repeats[key] = self._hang_repeats.get(key, 0) + 1
            return
        self._hang_last[key] = now
        self.log.warning("GPU/display hang reported by %s (%s): %s", m.driver, m.pattern, m.line[:200])
        out.append(self.rec.event("display.gpu_hang", {
            "driver": m.driver, "pattern": m.pattern, "line": m.line[:MAX_LINE], "device": m.device,
            "kernel_s": round(r.usec / 1e6, 6), "seq": r.seq, "level": r.level,
            "repeats_before": self._hang_repeats.pop(key, 0)}))

    def _heartbeat(self, payload: bytes, now: float) -> None:
        try:
            hb = parse_heartbeat(payload)
        except (ValueError, UnicodeDecodeError):
            self.counters.inc("malformed_heartbeat")
            return
        self.counters.inc("heartbeats")
        before = self.hb.frames
        if self.hb.last_rx is None:
            self.log.info("first HMI heartbeat received (frame %d)", hb.frames)
        moved = self.hb.update(hb, now)
        if moved and before is not None:
            self._win_frames += hb.frames - before if hb.frames > before else hb.frames
        if moved and not hb.animating:
            # A static HMI drew a frame: that answers a pending touch. An animating one draws anyway.
            self.input.redraw(now)

    def _press(self, now: float) -> None:
        self.counters.inc("input_presses")
        measurable = (self.fb is not None and self.fb.ok) or \
            (self.hb.last_rx is not None and not self.hb.animating)
        if measurable:
            self.input.press(now)
        else:
            self.counters.inc("input_unmeasurable")  # nothing could show whether the screen answered

    # -- periodic readers -----------------------------------------------------------------------------
    def _sample_fb(self, now: float) -> None:
        assert self.fb and self.frames
        u = self.fb.update(now)
        if u.error:
            if u.lost and not (self.hb.last_rx is not None and not self.hb.animating):
                self.input.clear()  # nothing can answer a pending touch now; do not blame the HMI for it
            self._source_down("framebuffer", now, str(u.error), f"fb_{u.error.reason}")
            return
        self._source_up("framebuffer")
        if u.reopened:
            self.input.redraw(now)  # a new framebuffer is a new picture
            lay = self.frames.layout
            assert lay
            self.log.info("framebuffer %s: %s %dx%d, %d bpp", self.cfg.fb_path or self.cfg.drm_sampler_socket,
                          lay.kind, lay.width, lay.height, lay.bits_per_pixel)
            for name in u.out_of_frame:
                self.counters.inc("region_out_of_frame")
                self.log.warning("region %s lies outside the %dx%d frame; ignored", name, lay.width, lay.height)
        elif u.grid_changed:
            self.input.redraw(now)

    def _poll_kms(self, now: float, *, flip: bool, state: bool) -> None:
        """fb_id (`flip`: every drm_flip_poll_s), then CRTC/connector state (`state`: with the sysfs readings, or
        on their schedule where there are none); a failed read takes the drm source down."""
        assert self.kms
        try:
            if flip:
                self.kms.poll_flip(now)
            if state:
                if self.sysfs is None:  # no sysfs readings: the connector state keeps their schedule alone
                    self._next["sysfs"] = max(self._next["sysfs"] + self.cfg.sysfs_interval_s, now)
                self._kms_connectors = self.kms.connectors(now, self._kms_conn_state)
        except OSError as e:
            self.kms.close()
            self._kms_connectors = ()
            self._source_down("drm", now, str(e), "drm_read_failed")

    def _read_sysfs(self, now: float) -> None:
        assert self.sysfs
        if self.kms and self.sources["drm"].up:
            self._poll_kms(now, flip=False, state=True)
        bls = self.sysfs.backlights()
        conns = self.sysfs.connectors()
        if self.sysfs.malformed != self._sysfs_malformed:
            self.counters.inc("malformed_sysfs", self.sysfs.malformed - self._sysfs_malformed)
            self._sysfs_malformed = self.sysfs.malformed
        bl_out = []
        for b in bls:
            prev = self._bl_state.get(b.device)
            if prev is None or prev[0] != b.state:
                self.log.info("backlight %s: %s", b.device, b.state)
                prev = self._bl_state[b.device] = (b.state, now)
            bl_out.append(BacklightSignal(b.device, b.state, prev[1], b.fields()))
        conn_out = []
        for c in conns:
            cprev = self._conn_state.get(c.name)
            if cprev is None or cprev[0] != c.ok:
                self.log.info("connector %s: %s/%s/%s", c.name, c.status, c.enabled, c.dpms)
                cprev = self._conn_state[c.name] = (c.ok, now)
            conn_out.append(ConnectorSignal(c.name, c.ok, cprev[1], c.fields()))
        self._backlights, self._connectors = tuple(bl_out), tuple(conn_out)

    def _poll_procs(self, now: float) -> None:
        assert self.procs
        out = []
        try:
            states = self.procs.poll(now)
        except (psutil.Error, OSError) as e:  # the process table changed under us: next poll
            self.counters.inc("process_poll_failed")
            self.log.debug("process poll failed: %s", e)
            return
        for p in states:
            if self._proc_state.get(p.name) != p.state:
                self.log.info("HMI process %s (pid %s): %s", p.name, p.pid, p.state)
                self._proc_state[p.name] = p.state
            if p.state != NOT_RUNNING:
                self._proc_seen.add(p.name)
            elif p.name not in self._proc_seen:
                continue  # not started yet (the agent may boot first): not a fault
            out.append(ProcessSignal(p.name, p.state, p.since, p.fields()))
        self._processes = tuple(out)

    # -- rules ----------------------------------------------------------------------------------------
    def signals(self, now: float) -> Signals:
        fb = self.fb
        fb_ok = fb is not None and fb.ok
        names = [r.name for r in self.cfg.regions]
        return Signals(
            now=now, fb_ok=fb_ok, frame_changed_at=fb.frame_changed_at if fb and fb_ok else None,
            black_since=fb.black_since if fb and fb_ok else None, regions=fb.region_signals() if fb else (),
            lit_fraction=fb.lit_fraction if fb and fb_ok else None, lit_limit=1.0 - self.cfg.black_fraction,
            trace_lit=fb.trace_lit if fb and fb_ok else None,
            region_lit=tuple(zip(names, fb.region_lit, strict=False)) if fb and fb_ok else (),
            flip_at=self.kms.flip_at if self.kms and self.sources["drm"].up else None,
            hb_last_rx=self.hb.last_rx, hb_last_advance=self.hb.last_advance, hb_animating=self.hb.animating,
            hb_screen_on=self.hb.screen_on, input_pending_since=self.input.pending_since,
            input_pending_count=self.input.count, backlights=self._backlights,
            connectors=self._connectors + self._kms_connectors,
            processes=self._processes, gpu_hang=self._gpu_hang)

    def _evaluate(self, now: float, out: list[Record]) -> None:
        sig = self.signals(now)
        j = judge(sig, self.th)
        fv, bv = j.freeze, j.black
        wall = self.clock.wall()
        if self.freeze.open and not fv.active and (bv.active or j.frame_black):
            # The frozen screen went black (compositor or HMI gone): not a recovery; a black episode follows once
            # it has lasted black_min_s.
            t = self.freeze.close(now, wall, "black_screen")
            if t:
                out.append(self._record(self.freeze, t))
        blind = self.fb is not None and not self.fb.ok
        frame_signals = ((self.freeze, fv, {"region", "input"}), (self.black, bv, {"framebuffer"}))
        for machine, verdict, seen_in_frame in frame_signals:
            if blind and machine.open and not verdict.active and machine.open.signals & seen_in_frame:
                # The frame source is down (the DRM helper restarting): nothing says this screen moved or lit up
                # again, so an episode the frame showed is held, not ended as "recovered"; it goes on (same start)
                # when the source is back, or ends with agent_stop.
                continue
            t = machine.step(verdict, now, wall)
            if t:
                out.append(self._record(machine, t))
        self._onset_events(sig, bv, now, out)

    def _record(self, machine: EpisodeMachine, t: Transition) -> Record:
        f = t.fields
        if t.kind == "begin":
            rec = self.rec.begin(machine.name, f)
            t.open.episode = rec.episode
            self.log.warning("%s began (cause %s, %.1f s ago; signals %s)", machine.name, f["cause"],
                             f["detected_after_s"], ", ".join(f["signals"]))
            return rec
        assert t.open.episode is not None
        self.log.warning("%s ended after %.1f s (cause %s, %s)", machine.name, f["duration_s"], f["cause"],
                         f["ended_by"])
        return self.rec.end(machine.name, t.open.episode, f)

    def _onset_events(self, sig: Signals, bv: Verdict, now: float, out: list[Record]) -> None:
        """One event when an HMI or backlight problem starts; nothing while it lasts."""
        current = problems(sig, bv, self.th)
        for key in current.keys() - self._onsets:
            name, fields = current[key]
            if key == "hb:missing":
                fields["last_frame"] = self.hb.frames
            if name == "display.backlight_fault":
                fields["black_episode"] = self.black.open.episode if self.black.open else None
            self.log.warning("%s: %s", name, fields.get("reason"))
            out.append(self.rec.event(name, fields))
        self._onsets = set(current)

    def _context(self, now: float) -> dict[str, Any]:
        """One display sample for the black box: how old the picture is, black or not, episodes open."""
        fb, hb = self.fb, self.hb
        out: dict[str, Any] = {"freeze": int(self.freeze.open is not None), "black": int(self.black.open is not None)}
        if fb is not None and fb.ok and fb.frame_changed_at is not None:
            out["frame_age_s"] = round(now - fb.frame_changed_at, 1)
            out["dark"] = int(fb.black_since is not None)
        if hb.last_rx is not None:
            out["hb_age_s"] = round(now - (hb.last_advance or hb.last_rx), 1)
        return out

    def _metrics(self, now: float) -> list[Record]:
        span = max(1e-6, now - self._win_start)
        out = []
        if self.fb:
            w = self.fb.take_window()
            if w.samples:
                out.append(self.rec.metric("display.changes_per_min", round(w.changes * 60 / span, 2)))
                out.append(self.rec.metric("display.black_pct", round(100 * w.black / w.samples, 1)))
        if self.hb.last_rx is not None:
            out.append(self.rec.metric("display.fps_estimate", round(self._win_frames / span, 2)))
        if self.kms:
            out.append(self.rec.metric("display.flips_per_min", round(self.kms.flips * 60 / span, 2)))
            self.kms.flips = 0
        self._win_start, self._win_frames = now, 0
        return out
