"""Dark themes are not black screens: a frame is black-screen evidence only when it is dark where the live UI is
not. Tables for the rule (rules.dark_ui_alive, the evidence it explains itself with) and for FrameTracker, which
keeps a dark grid with a lit region from ever being `black_since`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from display_helpers import write_xwd
from rule_timeline import Timeline, run

from agent.clock import FakeClock
from agent.probe import ProbeContext
from agent.probes.display import Config, DisplayProbe, rules
from agent.probes.display.frame_state import FrameTracker
from agent.probes.display.framebuffer import FrameSample, Layout
from agent.probes.display.rules import BacklightSignal, RegionSignal, Signals, Thresholds, black_verdict, freeze_verdict
from agent.probes.display.settings import RegionConfig
from agent.schema import build

TH = Thresholds(black_min_s=2.0)
CLOCK = RegionSignal("clock", last_change=0.0, stale_after_s=2.5)


def black_run(timeline: Timeline, base: dict[str, Any]) -> list[tuple[str, float]]:
    return [(kind, t) for kind, t, _, _ in run(timeline, "black", {"fb_ok": True, **base}, TH)]


DRM_CASES: list[tuple[str, dict[str, Any], list[tuple[float, dict[str, Any]]], list[tuple[str, float]]]] = [
    ("dark animated UI (lit pixels change, flips go on): never black",
     {"black_since": 0.0, "lit_fraction": 0.004, "flip_at": 0.0, "frame_changed_at": 0.0},
     [(float(t), {"flip_at": float(t), "frame_changed_at": float(t)}) for t in range(1, 30)], []),
    ("dark clock UI without a region: flips go on, its one lit grid pixel never changes: never black",
     {"black_since": 0.0, "lit_fraction": 0.0004, "flip_at": 0.0, "frame_changed_at": 0.0},
     [(float(t), {"flip_at": float(t)}) for t in range(1, 30)], []),
    ("compositor flips black buffers (no lit pixel): black within black_min_s",
     {"black_since": 0.0, "lit_fraction": 0.0, "flip_at": 0.0, "frame_changed_at": 0.0},
     [(float(t), {"flip_at": float(t)}) for t in range(1, 6)], [("begin", 2.0)]),
    ("console after the compositor died: dark, no flip since", {"black_since": 0.0, "lit_fraction": 0.001,
                                                                "flip_at": -5.0, "frame_changed_at": 0.0},
     [(float(t), {"frame_changed_at": float(t)}) for t in range(1, 6)], [("begin", 2.0)]),
    ("dark UI whose drawing stops is judged by its pixels again after black_min_s",
     {"black_since": 0.0, "lit_fraction": 0.004, "flip_at": 0.0, "frame_changed_at": 0.0},
     [(1.0, {"flip_at": 1.0, "frame_changed_at": 1.0}), (2.0, {}), (3.0, {}), (3.5, {})], [("begin", 3.0)]),
    ("truly black scanout with the backlight on: black within black_min_s",
     {"black_since": 0.0, "lit_fraction": 0.0, "flip_at": 0.0, "frame_changed_at": 0.0,
      "backlights": (BacklightSignal("panel", "on", 0.0, {"device": "panel"}),)},
     [(1.0, {}), (2.0, {}), (3.0, {})], [("begin", 2.0)]),
    ("X/fbdev (flips not observed): a dark grid with dark regions is black",
     {"black_since": 0.0, "lit_fraction": 0.001, "regions": (CLOCK,)}, [(1.0, {}), (2.0, {})], [("begin", 2.0)]),
]


@pytest.mark.parametrize(("base", "timeline", "expected"), [c[1:] for c in DRM_CASES],
                         ids=[c[0] for c in DRM_CASES])
def test_dark_frames(base: dict[str, Any], timeline: list[tuple[float, dict[str, Any]]],
                     expected: list[tuple[str, float]]) -> None:
    assert black_run(timeline, base) == expected


def test_black_evidence_explains_itself() -> None:
    s = Signals(now=5.0, fb_ok=True, black_since=1.0, lit_fraction=0.0004, flip_at=0.5, frame_changed_at=1.0,
                region_lit=(("clock", 0.0),), regions=(CLOCK,))
    v = black_verdict(s, TH)
    (frame,) = [e for e in v.evidence if e.kind == "black_frame"]
    assert frame.detail == {"backlight": "unknown", "connector": "unknown", "lit_pct": 0.04, "lit_limit_pct": 2.0,
                            "regions_lit_pct": {"clock": 0.0}, "flipped_since_black": False}


def test_frozen_dark_ui_is_a_freeze_not_black() -> None:
    """The dark theme's clock stops: its region is lit (so the frame is not black_since) and stale → a freeze."""
    s = Signals(now=10.0, fb_ok=True, black_since=None, lit_fraction=0.001, frame_changed_at=0.0, regions=(CLOCK,))
    assert freeze_verdict(s, TH).active and not black_verdict(s, TH).active


@dataclass
class FakeSource:
    samples: list[FrameSample]
    opens: int = 1
    layout: Layout | None = None

    def sample(self) -> FrameSample:
        return self.samples.pop(0)

    def close(self) -> None:
        pass


def _s(lit: float, region_lit: float, crc: int = 1) -> FrameSample:
    return FrameSample(7, (crc,), lit, lit <= 0.02, (region_lit,))


TRACKER_CASES = [
    ("bright UI", [_s(0.6, 0.5)], None, None),
    ("dark theme, lit clock: dark but not black", [_s(0.0015, 0.12), _s(0.0015, 0.11, 2)], 0.0, None),
    ("truly black: grid and region dark", [_s(0.0, 0.0), _s(0.0, 0.0)], 0.0, 0.0),
    ("dark theme, then the clock goes dark too", [_s(0.0015, 0.12), _s(0.0, 0.0, 2)], 0.0, 1.0),
    ("console cursor in the region (below lit_limit) does not keep it alive", [_s(0.0, 0.001)], 0.0, 0.0),
]


@pytest.mark.parametrize(("samples", "dark_since", "black_since"), [c[1:] for c in TRACKER_CASES],
                         ids=[c[0] for c in TRACKER_CASES])
def test_tracker_black_needs_dark_regions(samples: list[FrameSample], dark_since: float | None,
                                          black_since: float | None) -> None:
    t = FrameTracker(FakeSource(list(samples)), [RegionConfig(name="clock", x=0, y=0, width=10, height=10)], 0.5,
                     lit_limit=0.02)
    for i in range(len(samples)):
        t.update(float(i))
    assert (t.dark_since, t.black_since) == (dark_since, black_since)


def test_flips_stopped_supports_a_freeze_only_after_a_second_without_flips() -> None:
    base = Signals(now=10.0, fb_ok=True, frame_changed_at=0.0, regions=(CLOCK,))
    kinds = {e.kind for e in freeze_verdict(replace(base, flip_at=8.5), TH).evidence}
    assert "flips_stopped" in kinds
    kinds = {e.kind for e in freeze_verdict(replace(base, flip_at=9.5), TH).evidence}
    assert "flips_stopped" not in kinds  # the compositor still presents: the HMI's region is what is stuck


SPARSE = [
    # (name, region_lit, last_change, flip_at, alive)
    ("thin clock ticking in a roomy region", 0.004, 9.5, None, True),
    ("thin clock stopped (stale): judged by its pixels", 0.004, 5.0, None, False),
    ("region dark: nothing drawn there", 0.0, 9.5, None, False),
    ("changed before the frame went dark", 0.004, 0.5, None, False),
    ("DRM: changed in place without a flip (console cursor)", 0.004, 9.5, 0.5, False),
    ("DRM: changed with a flip since", 0.004, 9.5, 9.5, True),
]


@pytest.mark.parametrize(("lit", "last_change", "flip_at", "alive"), [c[1:] for c in SPARSE],
                         ids=[c[0] for c in SPARSE])
def test_sparse_clock_keeps_a_dark_ui_alive(lit: float, last_change: float, flip_at: float | None,
                                            alive: bool) -> None:
    s = Signals(now=10.0, fb_ok=True, black_since=1.0, lit_fraction=0.0, frame_changed_at=1.0, flip_at=flip_at,
                regions=(RegionSignal("clock", last_change, 2.5),), region_lit=(("clock", lit),))
    assert (not black_verdict(s, TH).active) is alive


def _counting_dark_ui_alive(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    real = rules.dark_ui_alive

    def counted(s: Signals, th: Thresholds) -> bool:
        calls[0] += 1
        return real(s, th)

    monkeypatch.setattr(rules, "dark_ui_alive", counted)
    return calls


def test_judge_asks_the_dark_ui_rule_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """A held black frame (a freeze's region stale too): both verdicts need the rule's answer; it is asked once."""
    s = Signals(now=10.0, fb_ok=True, black_since=1.0, lit_fraction=0.0, frame_changed_at=1.0, flip_at=9.5,
                regions=(CLOCK,), region_lit=(("clock", 0.0),), hb_last_rx=0.0)
    calls = _counting_dark_ui_alive(monkeypatch)
    j = rules.judge(s, TH)
    assert calls == [1]
    assert j.frame_black and j.black.active and j.freeze.active  # the heartbeat stopped: that freeze stands
    assert (j.freeze, j.black) == (freeze_verdict(s, TH), black_verdict(s, TH))


def test_probe_asks_the_dark_ui_rule_once_a_tick(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fb = tmp_path / "Xvfb_screen0"
    write_xwd(fb, 64, 32, rgb=(0, 0, 0))
    clock = FakeClock()
    cfg = build(Config, {"enabled": True, "fb_path": str(fb), "fb_interval_s": 0.5, "black_min_s": 2.0,
                         "sysfs_root": str(tmp_path / "sys"), "metrics_interval_s": 3600.0}, path="probes.display")
    probe = DisplayProbe(cfg, ProbeContext(clock=clock, emit=lambda r: None))
    calls = _counting_dark_ui_alive(monkeypatch)
    try:
        probe.open()
        out = []
        for _ in range(8):
            out += probe.tick()
            clock.advance(0.5)
    finally:
        probe.close()
    assert [r.name for r in out] == ["display.black"]   # black from the first frame: every tick asked
    assert calls == [8]
