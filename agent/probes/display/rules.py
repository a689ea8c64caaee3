"""Pure rules: one snapshot of the display signals → is the screen frozen, is it black, and why.

No I/O and no clocks: every time is a monotonic second handed in, so tests drive the rules from tables.

Freeze needs a *primary* signal saying the screen should have changed and did not (an expected-change region
went stale, heartbeats stopped, the HMI's frame counter stopped while it says it animates, or input got no
redraw). A static framebuffer alone is only supporting evidence: a menu nobody touches is not a freeze.
Black needs one of: backlight off or faulty, no connector driving the panel, or a (nearly) black frame, held for
`black_min_s`. A dark frame counts only when it is black where the live UI is not: a dark theme with a small
clock is nearly black on the grid too, so `black_since` (frame_state.py) requires every region to be dark as well,
and under DRM new frames with lit pixels still flipped say a dark UI is alive (`dark_ui_alive`). Both are
suppressed while the screen is not expected to be on. A black frame suppresses the freeze signals that read the
frame, so a dead HMI on a black screen is one black episode, not two.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import field
from typing import Any

from ...dataclass_shared import dataclass
from .hmi_process import BLOCKED_IO, BUSY, EXITED, NOT_RUNNING, OK, STOPPED

# Freeze causes, most specific first (docs/display.md explains the evidence each one needs).
GPU_HANG = "gpu_hang"
HMI_CAUSES = {STOPPED: "hmi_stopped", EXITED: "hmi_exited", NOT_RUNNING: "hmi_not_running",
              BLOCKED_IO: "hmi_blocked_io", BUSY: "hmi_busy"}
HMI_DEADLOCK = "hmi_deadlock"    # heartbeats stopped, the process looks fine: its event loop is stuck
RENDER_STALL = "render_stall"    # heartbeats arrive, frames do not: the render thread, compositor or GPU
UNKNOWN = "unknown"
# Black causes, most specific first.
BACKLIGHT_FAULT = "backlight_fault"
BACKLIGHT_OFF = "backlight_off"
CONNECTOR_OFF = "connector_off"
BLACK_FRAME = "black_frame"

# Every cause, most specific first. Defined once: explain() and black_verdict() pick the first one the evidence
# supports, and an open episode only ever moves up this order (episodes.EpisodeMachine), so an HMI deadlock
# whose event loop resumes (frames_stalled for a moment) stays a deadlock, never becomes a render stall.
FREEZE_CAUSE_ORDER = (GPU_HANG, *HMI_CAUSES.values(), HMI_DEADLOCK, RENDER_STALL, UNKNOWN)
BLACK_CAUSE_ORDER = (BACKLIGHT_FAULT, BACKLIGHT_OFF, CONNECTOR_OFF, BLACK_FRAME)


def specificity(cause: str) -> int:
    """Rank of a cause: lower is more specific; a cause outside both orders ranks last."""
    for order in (FREEZE_CAUSE_ORDER, BLACK_CAUSE_ORDER):
        if cause in order:
            return order.index(cause)
    return len(FREEZE_CAUSE_ORDER)


def more_specific(new: str, old: str) -> bool:
    """Whether `new` may replace `old` as an open episode's cause (never sideways, never down)."""
    return bool(new) and specificity(new) < specificity(old)


@dataclass(frozen=True)
class Thresholds:
    heartbeat_timeout_s: float = 3.0
    input_timeout_s: float = 5.0
    input_presses: int = 1
    black_min_s: float = 2.0
    gpu_hang_window_s: float = 30.0
    screen_expected_on: str = "always"   # unless the HMI says screen=0; "heartbeat": only while it says screen=1
    flips_stopped_s: float = 1.0         # DRM: no page flip for this long supports a freeze (`flips_stopped`)


@dataclass(frozen=True)
class RegionSignal:
    name: str
    last_change: float          # when the region was last seen to change (or first seen)
    stale_after_s: float


@dataclass(frozen=True)
class BacklightSignal:
    device: str
    state: str                  # on | off | fault (sysfs.BacklightReading.state)
    since: float                # when this state was first seen
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConnectorSignal:
    name: str
    ok: bool
    since: float
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcessSignal:
    name: str
    state: str                  # hmi_process.OK, STOPPED, ...
    since: float
    fields: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GpuHangSignal:
    t: float
    driver: str
    pattern: str
    line: str


@dataclass(frozen=True)
class Signals:
    now: float
    fb_ok: bool = False                       # a frame was read at the last sample
    frame_changed_at: float | None = None     # the sparse grid (outside regions) last changed
    black_since: float | None = None          # grid and every region dark since (frame_state.py); None = not
    lit_fraction: float | None = None         # share of grid pixels above black_level at the last sample
    trace_lit: float | None = None            # DRM: whole-row lit share, read when no grid pixel was lit
    region_lit: tuple[tuple[str, float | None], ...] = ()  # per region: share of its pixels above black_level
    lit_limit: float = 0.02                   # at or below this share a frame is "nearly black" (1 - black_fraction)
    flip_at: float | None = None              # DRM: the primary plane last flipped; None = flips not observed
    regions: tuple[RegionSignal, ...] = ()
    hb_last_rx: float | None = None
    hb_last_advance: float | None = None
    hb_animating: bool = True
    hb_screen_on: bool | None = None
    input_pending_since: float | None = None  # first press that has not been answered by a redraw
    input_pending_count: int = 0
    backlights: tuple[BacklightSignal, ...] = ()
    connectors: tuple[ConnectorSignal, ...] = ()
    processes: tuple[ProcessSignal, ...] = ()
    gpu_hang: GpuHangSignal | None = None


@dataclass(frozen=True)
class Evidence:
    signal: str                 # region | heartbeat | input | framebuffer | kmsg | process | backlight | connector
    kind: str
    since: float
    primary: bool
    detail: Mapping[str, Any] = field(default_factory=dict)

    def fields(self, now: float) -> dict[str, Any]:
        return {"signal": self.signal, "kind": self.kind, "for_s": round(max(0.0, now - self.since), 2),
                **self.detail}


@dataclass(frozen=True)
class Verdict:
    active: bool
    since: float | None = None
    cause: str = ""
    evidence: tuple[Evidence, ...] = ()

    @property
    def primary(self) -> tuple[Evidence, ...]:
        return tuple(e for e in self.evidence if e.primary)


INACTIVE = Verdict(False)


def screen_expected_on(s: Signals, th: Thresholds) -> bool:
    """An HMI that says screen=0 switched it off on purpose; in "heartbeat" mode only screen=1 counts as on."""
    if th.screen_expected_on == "heartbeat":
        return s.hb_screen_on is True
    return s.hb_screen_on is not False


def _heartbeat_missing(s: Signals, th: Thresholds) -> bool:
    return s.hb_last_rx is not None and s.now - s.hb_last_rx > th.heartbeat_timeout_s


def _supporting(s: Signals, th: Thresholds, start: float) -> list[Evidence]:
    """Evidence that explains an episode but cannot start one."""
    out = []
    hang = s.gpu_hang
    if hang is not None and hang.t >= start - th.gpu_hang_window_s:
        out.append(Evidence("kmsg", "gpu_hang", hang.t, False,
                            {"driver": hang.driver, "pattern": hang.pattern, "line": hang.line}))
    for p in s.processes:
        if p.state != OK:
            out.append(Evidence("process", f"process_{p.state}", p.since, False, dict(p.fields)))
    return out


def freeze_evidence(s: Signals, th: Thresholds, frame_black: bool) -> list[Evidence]:
    ev: list[Evidence] = []
    if s.fb_ok and not frame_black:
        for r in s.regions:
            if s.now - r.last_change > r.stale_after_s:
                ev.append(Evidence("region", "region_stale", r.last_change, True,
                                   {"region": r.name, "expected_within_s": round(r.stale_after_s, 2)}))
    if _heartbeat_missing(s, th):
        assert s.hb_last_rx is not None
        ev.append(Evidence("heartbeat", "heartbeat_missing", s.hb_last_rx, True,
                           {"timeout_s": th.heartbeat_timeout_s}))
    elif s.hb_animating and s.hb_last_advance is not None and s.now - s.hb_last_advance > th.heartbeat_timeout_s:
        ev.append(Evidence("heartbeat", "frames_stalled", s.hb_last_advance, True,
                           {"timeout_s": th.heartbeat_timeout_s}))
    if (s.input_pending_since is not None and s.input_pending_count >= th.input_presses and not frame_black
            and s.now - s.input_pending_since > th.input_timeout_s):
        ev.append(Evidence("input", "input_no_redraw", s.input_pending_since, True,
                           {"presses": s.input_pending_count, "timeout_s": th.input_timeout_s}))
    if not ev:
        return ev
    start = min(e.since for e in ev)
    if s.fb_ok and s.frame_changed_at is not None and s.frame_changed_at <= start:
        ev.append(Evidence("framebuffer", "frame_static", s.frame_changed_at, False))
    # The primary plane has not flipped for a while: the compositor presents nothing new (the region's last change
    # is only known to a sample interval, flips to a poll interval, so no comparison with `start`).
    if s.flip_at is not None and s.now - s.flip_at >= th.flips_stopped_s:
        ev.append(Evidence("drm", "flips_stopped", s.flip_at, False))
    return ev + _supporting(s, th, start)


def explain(evidence: Sequence[Evidence]) -> str:
    """The most specific cause the evidence supports (FREEZE_CAUSE_ORDER)."""
    supported = {UNKNOWN}
    for e in evidence:
        if e.kind == "gpu_hang":
            supported.add(GPU_HANG)
        elif e.signal == "process":
            supported.add(HMI_CAUSES.get(e.kind.removeprefix("process_"), UNKNOWN))
        elif e.kind == "heartbeat_missing":
            supported.add(HMI_DEADLOCK)
        elif e.kind == "frames_stalled":
            supported.add(RENDER_STALL)
    return min(supported, key=specificity)


def freeze_verdict(s: Signals, th: Thresholds, frame_black: bool | None = None) -> Verdict:
    """`frame_black` is `frame_is_black(s, th)` where the caller has it already (`judge`)."""
    if not screen_expected_on(s, th):
        return INACTIVE
    ev = freeze_evidence(s, th, frame_is_black(s, th) if frame_black is None else frame_black)
    primary = [e for e in ev if e.primary]
    if not primary:
        return INACTIVE
    return Verdict(True, min(e.since for e in primary), explain(ev), tuple(ev))


def black_evidence(s: Signals, th: Thresholds, frame_black: bool) -> list[Evidence]:
    ev: list[Evidence] = []
    held = th.black_min_s
    for b in s.backlights:
        if b.state in ("off", "fault") and s.now - b.since >= held:
            kind = BACKLIGHT_FAULT if b.state == "fault" else BACKLIGHT_OFF
            ev.append(Evidence("backlight", kind, b.since, True, dict(b.fields)))
    if s.connectors and not any(c.ok for c in s.connectors):
        since = max(c.since for c in s.connectors)
        if s.now - since >= held:
            ev.append(Evidence("connector", CONNECTOR_OFF, since, True,
                               {"connectors": [dict(c.fields) for c in s.connectors]}))
    if frame_black and s.black_since is not None and s.now - s.black_since >= held:
        bl = "unknown" if not s.backlights else ("on" if all(b.state == "on" for b in s.backlights) else "off")
        conn = "unknown" if not s.connectors else ("ok" if any(c.ok for c in s.connectors) else "off")
        ev.append(Evidence("framebuffer", BLACK_FRAME, s.black_since, True, {
            "backlight": bl, "connector": conn, **_dark_detail(s)}))
    return ev


def _sparse_live_regions(s: Signals) -> list[str]:
    """Regions with a few lit pixels (more than none, no more than lit_limit: a thin clock in a roomy region) that
    changed after the frame went dark and are not stale: the UI is drawing there. Under DRM only with a flip since
    then too, because the console's blinking cursor changes pixels in place without flipping."""
    assert s.black_since is not None
    if s.flip_at is not None and s.flip_at <= s.black_since:
        return []
    lit = dict(s.region_lit)
    return [r.name for r in s.regions if (lit.get(r.name) or 0.0) > 0.0 and r.last_change > s.black_since
            and s.now - r.last_change <= r.stale_after_s]


def dark_ui_alive(s: Signals, th: Thresholds) -> bool:
    """A dark frame whose every region is dark too that is still not a black screen, because something in it is
    being drawn: a region with a few lit pixels that keeps changing (a thin clock), or (DRM) new frames with lit
    pixels flipped within `black_min_s` (a dark UI without a region). Flips, not grid changes: a small clock
    ticks under one or two grid points that stay lit from digit to digit (re-tested on the rig: a dark clock UI
    with 0.04 % lit was one 8 s black episode when grid changes were asked for), and a compositor flips only
    for damage, so flips over lit pixels are drawing. Lit pixels are the grid's or, when the grid has none, the
    helper's whole-row trace (`trace_lit`: the same clock at another time of day fell between grid points and
    was a black episode, CI 2026-12-05). A frame with no lit pixel is black whatever flips (a compositor
    presenting black buffers is the fault); a dark UI that stops flipping is judged by its pixels
    again. Not black, then, but a freeze's business: a renderer re-presenting one near-black frame for ever."""
    if s.black_since is None:
        return False
    if _sparse_live_regions(s):
        return True
    if s.flip_at is None or not (s.lit_fraction or s.trace_lit):
        return False
    return s.flip_at > max(s.black_since, s.now - th.black_min_s)


def frame_is_black(s: Signals, th: Thresholds) -> bool:
    """The frame (grid and every region) is dark and nothing drawn in it says a dark UI is alive."""
    return s.black_since is not None and not dark_ui_alive(s, th)


@dataclass(frozen=True)
class Judgement:
    freeze: Verdict
    black: Verdict
    frame_black: bool           # frame_is_black(): a black frame ends a freeze without being a recovery


def judge(s: Signals, th: Thresholds) -> Judgement:
    """Both verdicts of one snapshot, with the dark-UI rule evaluated once: the probe's every tick (both verdicts
    and the freeze-to-black hand-over ask it; each answer walks the regions)."""
    frame_black = frame_is_black(s, th)
    return Judgement(freeze_verdict(s, th, frame_black), black_verdict(s, th, frame_black), frame_black)


def _dark_detail(s: Signals) -> dict[str, Any]:
    """Why a dark frame counts as black, in the evidence: how dark the grid and each region are (a dark theme's
    clock region is lit, so it never gets here) and, under DRM, whether new frames were still flipped."""
    out: dict[str, Any] = {"lit_pct": round(100 * (s.lit_fraction or 0.0), 3),
                           "lit_limit_pct": round(100 * s.lit_limit, 3)}
    if s.region_lit:
        out["regions_lit_pct"] = {name: None if lit is None else round(100 * lit, 3)
                                  for name, lit in s.region_lit}
    if s.trace_lit is not None:
        out["trace_lit_pct"] = round(100 * s.trace_lit, 3)
    if s.flip_at is not None:
        assert s.black_since is not None
        out["flipped_since_black"] = s.flip_at > s.black_since
    return out


def black_verdict(s: Signals, th: Thresholds, frame_black: bool | None = None) -> Verdict:
    """`frame_black` is `frame_is_black(s, th)` where the caller has it already (`judge`)."""
    if not screen_expected_on(s, th):
        return INACTIVE
    ev = black_evidence(s, th, frame_is_black(s, th) if frame_black is None else frame_black)
    if not ev:
        return INACTIVE
    cause = min((e.kind for e in ev), key=specificity)
    since = min(e.since for e in ev)
    return Verdict(True, since, cause, tuple(ev + _supporting(s, th, since)))


def black_explanation(v: Verdict) -> str:
    """For a black frame: what is behind it (gpu_hang, hmi_*, unknown); for the others the cause says it."""
    return explain(v.evidence) if v.cause == BLACK_FRAME else v.cause


def problems(s: Signals, black: Verdict, th: Thresholds) -> dict[str, tuple[str, dict[str, Any]]]:
    """The HMI and backlight problems present now, keyed so that each one's start can be reported once:
    key -> (event name, fields)."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for p in s.processes:
        if p.state != OK:
            out[f"proc:{p.name}:{p.state}"] = ("display.hmi_unresponsive", {
                "reason": p.state, **p.fields, "for_s": round(s.now - p.since, 2)})
    if _heartbeat_missing(s, th):
        assert s.hb_last_rx is not None
        out["hb:missing"] = ("display.hmi_unresponsive", {
            "reason": "heartbeat_missing", "for_s": round(s.now - s.hb_last_rx, 2)})
    for e in black.evidence:
        if e.signal == "backlight":  # only present while the screen should be on, held for black_min_s
            out[f"bl:{e.detail.get('device')}:{e.kind}"] = ("display.backlight_fault", {
                "reason": e.kind, **e.detail, "for_s": round(s.now - e.since, 2)})
    return out


@dataclass
class InputTracker:
    """Presses waiting for a redraw. A redraw observed after the first pending press answers all of them."""

    pending_since: float | None = None
    count: int = 0

    def press(self, now: float) -> None:
        if self.pending_since is None:
            self.pending_since = now
        self.count += 1

    def redraw(self, at: float) -> None:
        if self.pending_since is not None and at >= self.pending_since:
            self.clear()

    def clear(self) -> None:
        """Forget pending presses (the screen they were waiting on went away)."""
        self.pending_since, self.count = None, 0
