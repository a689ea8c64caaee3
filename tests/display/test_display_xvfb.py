"""Real parts: Xvfb keeps its screen in an XWD file, xclock plays the HMI. SIGSTOP freezes it, killing it
leaves the black root window."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from display_helpers import clock_ticks, fields, wait_for

from agent.clock import SystemClock
from agent.probe import ProbeContext
from agent.probes.display import Config, DisplayProbe
from agent.records import Kind, Record
from agent.schema import build
from tools.demo_parts.display import CLOCK_REGION, Xvfb, stop_client

FB_INTERVAL_S = 0.1
HMI = "xclock-hmi"


class Running:
    def __init__(self, xvfb: Xvfb, tmp: Path, **cfg: object) -> None:
        self.records: list[Record] = []
        table = {"enabled": True, "fb_path": str(xvfb.fb_path), "fb_interval_s": FB_INTERVAL_S,
                 "regions": [CLOCK_REGION], "hmi_processes": [HMI], "process_interval_s": 0.25,
                 "sysfs_root": str(tmp / "sys"), **cfg}
        self.probe = DisplayProbe(build(Config, table, path="probes.display"),
                                  ProbeContext(clock=SystemClock(), emit=self.records.append))

    def named(self, name: str, kind: Kind) -> list[Record]:
        return [r for r in list(self.records) if r.name == name and r.kind is kind]


@pytest.fixture
def running(xvfb: Xvfb, tmp_path: Path) -> Iterator[Callable[..., Running]]:
    made: list[Running] = []

    def make(**cfg: object) -> Running:
        r = Running(xvfb, tmp_path, **cfg)
        r.probe.start()
        made.append(r)
        return r
    yield make
    for r in made:
        r.probe.stop()


def wait_ready(r: Running, changed: Callable[[], bool]) -> None:
    """The clock really ticks (its first "change" may be the window being mapped) and the probe has seen the
    HMI process running and sampled the drawn screen."""
    wait_for(changed, 5, "the clock window")
    changed()
    wait_for(changed, 3, "the clock to tick")
    wait_for(lambda: r.probe.status()["hmi"].get(HMI) == "ok", 5, "the probe to see the HMI running")
    time.sleep(3 * FB_INTERVAL_S)


def test_sigstop_freeze_is_timed_and_explained(xvfb: Xvfb, running: Callable[..., Running]) -> None:
    hmi = xvfb.xclock(name=HMI)
    try:
        r = running()
        changed = clock_ticks(xvfb)
        wait_ready(r, changed)
        changed()                                   # forget the ticks seen while waiting
        wait_for(changed, 2, "the next tick")       # stop right after a redraw: the freeze starts now
        hmi.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        seen_before_stop = len(r.records)
        wait_for(lambda: r.named("display.freeze", Kind.BEGIN), 4, "display.freeze BEGIN")
        (begin,) = r.named("display.freeze", Kind.BEGIN)
        assert fields(begin)["cause"] == "hmi_stopped"
        assert {"region", "process"} <= set(fields(begin)["signals"])
        time.sleep(max(0.0, 4.0 - (time.monotonic() - stopped_at)))
        hmi.send_signal(signal.SIGCONT)
        stop_s = time.monotonic() - stopped_at
        wait_for(lambda: r.named("display.freeze", Kind.END), 3, "display.freeze END")
        (end,) = r.named("display.freeze", Kind.END)
        assert end.episode == begin.episode and fields(end)["ended_by"] == "recovered"
        # Start = last sample that saw the clock move, end = first one that saw it move again.
        assert abs(fields(end)["duration_s"] - stop_s) <= 2 * FB_INTERVAL_S + 0.15, (end.data, stop_s)
        kinds = {e["kind"] for e in fields(end)["evidence"]}
        assert {"region_stale", "process_stopped"} <= kinds
        # (A slow start under load may be a legit black episode before the HMI drew; none during the freeze.)
        assert not [x for x in r.records[seen_before_stop:] if x.name == "display.black"]
    finally:
        stop_client(hmi)


def test_dead_hmi_on_black_root_is_a_black_screen(xvfb: Xvfb, running: Callable[..., Running]) -> None:
    hmi = xvfb.xclock(name=HMI)
    try:
        r = running(black_min_s=1.0)
        wait_ready(r, clock_ticks(xvfb))
        killed_at = time.monotonic()
        hmi.kill()
        hmi.wait()
        wait_for(lambda: r.named("display.black", Kind.BEGIN), 5, "display.black BEGIN")
        (begin,) = r.named("display.black", Kind.BEGIN)
        assert fields(begin)["cause"] == "black_frame"
        assert fields(begin)["explanation"] == "hmi_not_running"
        hmi = xvfb.xclock(name=HMI)                  # the HMI is restarted
        wait_for(lambda: r.named("display.black", Kind.END), 5, "display.black END")
        (end,) = r.named("display.black", Kind.END)
        assert fields(end)["explanation"] == "hmi_not_running"
        assert 0 < fields(end)["duration_s"] <= time.monotonic() - killed_at + 2 * FB_INTERVAL_S
        assert r.named("display.freeze", Kind.BEGIN) == []  # black wins: one episode, not two
    finally:
        stop_client(hmi)
