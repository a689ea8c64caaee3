"""The pure freeze/black rules, driven from timelines: [(t, changes to the signals), ...] → transitions."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import rule_timeline
from rule_timeline import Timeline, Transitions

from agent.probes.display.episodes import EpisodeMachine
from agent.probes.display.rules import (
    BacklightSignal,
    ConnectorSignal,
    GpuHangSignal,
    InputTracker,
    ProcessSignal,
    RegionSignal,
    Signals,
    Thresholds,
    black_explanation,
    black_verdict,
    freeze_verdict,
    problems,
)

TH = Thresholds(heartbeat_timeout_s=3.0, input_timeout_s=5.0, black_min_s=2.0, gpu_hang_window_s=30.0)


def run(timeline: Timeline, which: str = "freeze", base: dict[str, Any] | None = None,
        th: Thresholds = TH) -> Transitions:
    return rule_timeline.run(timeline, which, base, th)


def ticks(t0: float, t1: float, step: float = 1.0, **change: Any) -> Timeline:
    n = round((t1 - t0) / step)
    return [(t0 + i * step, dict(change) if i == 0 else {}) for i in range(n + 1)]


FB = {"fb_ok": True, "frame_changed_at": 0.0}
CLOCK = RegionSignal("clock", last_change=0.0, stale_after_s=2.5)
HANG = GpuHangSignal(t=1.0, driver="panfrost", pattern="sched_timeout", line="gpu sched timeout, js=1")

FREEZE_CASES: list[tuple[str, dict[str, Any], Timeline, list[tuple[str, float, str, float | None]]]] = [
    ("static menu nobody touches is not a freeze", FB, ticks(0, 120, 5), []),
    ("clock region stops: begins back-dated, ends at the next change",
     {**FB, "regions": (CLOCK,)},
     [(1, {}), (2, {}), (3, {}), (4, {}), (7, {"regions": (replace(CLOCK, last_change=7.0),)}), (8, {})],
     [("begin", 3, "unknown", None), ("end", 7, "unknown", 7.0)]),
    ("clock keeps ticking", {**FB, "regions": (CLOCK,)},
     [(float(t), {"regions": (replace(CLOCK, last_change=float(t)),)}) for t in range(20)], []),
    ("region evidence needs a frame", {"fb_ok": False, "regions": (CLOCK,)}, ticks(0, 10), []),
    ("a black frame is a black episode, not also a freeze", {**FB, "regions": (CLOCK,), "black_since": 0.0},
     ticks(0, 10), []),
    ("heartbeats stop while the process looks fine: HMI deadlock",
     {"hb_last_rx": 0.0, "hb_last_advance": 0.0},
     [(1, {}), (3, {}), (4, {}), (6, {"hb_last_rx": 6.0, "hb_last_advance": 6.0})],
     [("begin", 4, "hmi_deadlock", None), ("end", 6, "hmi_deadlock", 6.0)]),
    ("heartbeats stop and the process is gone",
     {"hb_last_rx": 0.0, "hb_last_advance": 0.0,
      "processes": (ProcessSignal("hmi", "not_running", 0.5, {"process": "hmi"}),)},
     [(4, {}), (5, {"hb_last_rx": 5.0, "hb_last_advance": 5.0, "processes": ()})],
     [("begin", 4, "hmi_not_running", None), ("end", 5, "hmi_not_running", 5.0)]),
    ("heartbeats arrive, frame counter stuck while animating: render stall",
     {"hb_last_rx": 0.0, "hb_last_advance": 0.0},
     [(float(t), {"hb_last_rx": float(t)}) for t in range(6)] + [(6, {"hb_last_rx": 6.0, "hb_last_advance": 6.0})],
     [("begin", 4, "render_stall", None), ("end", 6, "render_stall", 6.0)]),
    ("counter stuck on a static HMI (anim=0) is fine",
     {"hb_last_rx": 0.0, "hb_last_advance": 0.0, "hb_animating": False},
     [(float(t), {"hb_last_rx": float(t)}) for t in range(30)], []),
    ("touch without redraw for 5 s (ANR)", {**FB},
     [(1, {"input_pending_since": 1.0, "input_pending_count": 1}), (5, {}), (6.5, {}),
      (9, {"input_pending_since": None, "input_pending_count": 0, "frame_changed_at": 9.0})],
     [("begin", 6.5, "unknown", None), ("end", 9, "unknown", 8.0)]),
    ("touch answered within the timeout", {**FB},
     [(1, {"input_pending_since": 1.0, "input_pending_count": 1}),
      (3, {"input_pending_since": None, "input_pending_count": 0}), (10, {})], []),
    ("GPU hang in the kernel log explains the freeze", {**FB, "regions": (CLOCK,), "gpu_hang": HANG},
     [(3, {}), (5, {"regions": (replace(CLOCK, last_change=5.0),)})],
     [("begin", 3, "gpu_hang", None), ("end", 5, "gpu_hang", 5.0)]),
    ("a hang long before the freeze does not", {**FB, "regions": (replace(CLOCK, last_change=100.0),),
                                               "gpu_hang": HANG},
     [(103, {}), (105, {"regions": (replace(CLOCK, last_change=105.0),)})],
     [("begin", 103, "unknown", None), ("end", 105, "unknown", 5.0)]),
    ("a hang logged during the freeze upgrades the cause", {**FB, "regions": (CLOCK,)},
     [(3, {}), (4, {"gpu_hang": replace(HANG, t=4.0)}), (6, {"regions": (replace(CLOCK, last_change=6.0),)})],
     [("begin", 3, "unknown", None), ("end", 6, "gpu_hang", 6.0)]),
    ("SIGSTOPped HMI", {**FB, "regions": (CLOCK,),
                        "processes": (ProcessSignal("hmi", "stopped", 0.2, {"process": "hmi"}),)},
     [(3, {}), (4, {"regions": (replace(CLOCK, last_change=4.0),), "processes": ()})],
     [("begin", 3, "hmi_stopped", None), ("end", 4, "hmi_stopped", 4.0)]),
    ("screen meant to be off (heartbeat mode, screen=0)",
     {"hb_last_rx": 0.0, "hb_last_advance": 0.0, "hb_screen_on": False}, ticks(0, 10), []),
]


@pytest.mark.parametrize(("base", "timeline", "expected"), [c[1:] for c in FREEZE_CASES],
                         ids=[c[0] for c in FREEZE_CASES])
def test_freeze_rules(base: dict[str, Any], timeline: Timeline, expected: list[Any]) -> None:
    assert run(timeline, "freeze", base) == expected


def test_freeze_input_presses_threshold() -> None:
    th = replace(TH, input_presses=2)
    tl: Timeline = [(1, {"input_pending_since": 1.0, "input_pending_count": 1}), (10, {}),
                    (11, {"input_pending_count": 2}), (12, {})]
    assert run(tl, "freeze", dict(FB), th) == [("begin", 11, "unknown", None)]


def test_heartbeat_mode_requires_screen_on() -> None:
    th = replace(TH, screen_expected_on="heartbeat")
    base = {"hb_last_rx": 0.0, "hb_last_advance": 0.0}
    assert run([(5, {})], "freeze", base, th) == []
    assert run([(5, {"hb_screen_on": True})], "freeze", base, th) == [("begin", 5, "hmi_deadlock", None)]


BL_ON = BacklightSignal("panel", "on", 0.0, {"device": "panel"})
CONN_OK = ConnectorSignal("card0-DSI-1", True, 0.0, {"connector": "card0-DSI-1"})

BLACK_CASES: list[tuple[str, dict[str, Any], Timeline, list[tuple[str, float, str, float | None]]]] = [
    ("short black (a transition) is nothing", {"backlights": (BL_ON,), "connectors": (CONN_OK,)},
     [(1, {"black_since": 1.0}), (2.5, {}), (3, {"black_since": None}), (9, {})], []),
    ("black frame, backlight on, connector enabled: black-screen fault",
     {"backlights": (BL_ON,), "connectors": (CONN_OK,)},
     [(1, {"black_since": 1.0}), (3, {}), (8, {"black_since": None})],
     [("begin", 3, "black_frame", None), ("end", 8, "black_frame", 7.0)]),
    ("backlight switched off while it should be on", {"backlights": (BL_ON,)},
     [(1, {"backlights": (replace(BL_ON, state="off", since=1.0),)}), (2, {}), (3.5, {}),
      (5, {"backlights": (replace(BL_ON, since=5.0),)})],
     [("begin", 3.5, "backlight_off", None), ("end", 5, "backlight_off", 4.0)]),
    ("commanded on, hardware reports 0: backlight fault beats the black frame",
     {"connectors": (CONN_OK,)},
     [(1, {"black_since": 1.0, "backlights": (replace(BL_ON, state="fault", since=1.0),)}), (4, {})],
     [("begin", 4, "backlight_fault", None)]),
    ("connector disabled", {"backlights": (BL_ON,)},
     [(0, {"connectors": (replace(CONN_OK, ok=False, since=0.0),)}), (2, {}),
      (3, {"connectors": (replace(CONN_OK, since=3.0),)})],
     [("begin", 2, "connector_off", None), ("end", 3, "connector_off", 3.0)]),
    ("one of two connectors still drives a panel", {},
     [(0, {"connectors": (replace(CONN_OK, ok=False), replace(CONN_OK, name="card0-HDMI-A-1"))}), (9, {})], []),
    ("backlight off and a black frame: the backlight is the cause",
     {"backlights": (replace(BL_ON, state="off"),)}, [(0, {"black_since": 0.0}), (2, {})],
     [("begin", 2, "backlight_off", None)]),
    ("screen meant to be off", {"hb_screen_on": False, "backlights": (replace(BL_ON, state="off"),)},
     ticks(0, 10), []),
]


@pytest.mark.parametrize(("base", "timeline", "expected"), [c[1:] for c in BLACK_CASES],
                         ids=[c[0] for c in BLACK_CASES])
def test_black_rules(base: dict[str, Any], timeline: Timeline, expected: list[Any]) -> None:
    assert run(timeline, "black", base) == expected


def test_black_frame_explained_by_gpu_hang_and_backlight_detail() -> None:
    sig = Signals(now=5.0, fb_ok=True, black_since=1.0, backlights=(BL_ON,), connectors=(CONN_OK,),
                  gpu_hang=HANG)
    v = black_verdict(sig, TH)
    assert v.active and v.cause == "black_frame" and black_explanation(v) == "gpu_hang"
    frame = next(e for e in v.evidence if e.kind == "black_frame")
    assert frame.detail == {"backlight": "on", "connector": "ok", "lit_pct": 0.0, "lit_limit_pct": 2.0}


def test_episode_fields_have_evidence_signals_and_back_dated_start() -> None:
    m = EpisodeMachine("display.freeze")
    base = Signals(now=0.0, fb_ok=True, frame_changed_at=0.0, regions=(CLOCK,),
                   processes=(ProcessSignal("hmi", "stopped", 0.5, {"process": "hmi", "pid": 7}),))
    begin = m.step(freeze_verdict(replace(base, now=3.0), TH), 3.0, 1003.0)
    assert begin and begin.kind == "begin"
    f = begin.fields
    assert f["start"] == 1000.0 and f["detected_after_s"] == 3.0 and f["cause"] == "hmi_stopped"
    assert f["signals"] == ["framebuffer", "process", "region"]
    assert {e["kind"] for e in f["evidence"]} == {"region_stale", "frame_static", "process_stopped"}
    begin.open.episode = 42
    end = m.step(freeze_verdict(replace(base, now=9.0, regions=(replace(CLOCK, last_change=9.0),)), TH),
                 9.0, 1009.0)
    assert end and end.kind == "end"
    assert end.fields["duration_s"] == 9.0 and end.fields["end"] == 1009.0
    assert end.fields["ended_by"] == "recovered" and end.open.episode == 42
    assert m.close(10.0, 1010.0, "agent_stop") is None


def test_input_tracker() -> None:
    t = InputTracker()
    t.redraw(1.0)
    assert t.pending_since is None
    t.press(2.0)
    t.press(3.0)
    assert (t.pending_since, t.count) == (2.0, 2)
    t.redraw(1.5)  # a change seen before the press does not answer it
    assert t.pending_since == 2.0
    t.redraw(4.0)
    assert (t.pending_since, t.count) == (None, 0)


def test_problems_are_keyed_for_one_event_each() -> None:
    sig = Signals(now=10.0, hb_last_rx=5.0, backlights=(replace(BL_ON, state="off", since=1.0),),
                  processes=(ProcessSignal("hmi", "stopped", 8.0, {"process": "hmi", "pid": 3}),
                             ProcessSignal("media", "ok", 0.0, {"process": "media"})))
    got = problems(sig, black_verdict(sig, TH), TH)
    assert {k: (name, f["reason"]) for k, (name, f) in got.items()} == {
        "proc:hmi:stopped": ("display.hmi_unresponsive", "stopped"),
        "hb:missing": ("display.hmi_unresponsive", "heartbeat_missing"),
        "bl:panel:backlight_off": ("display.backlight_fault", "backlight_off"),
    }
    assert got["proc:hmi:stopped"][1]["for_s"] == 2.0
    # Screen meant to be off: a dark backlight is no fault (the HMI problems still are).
    off = replace(sig, hb_screen_on=False)
    assert set(problems(off, black_verdict(off, TH), TH)) == {"proc:hmi:stopped", "hb:missing"}
