"""The scanout helper's only input is a JSON request on its socket: refused unless exactly what the protocol
allows (table). And the agent's client against the helper's real serve loop over a real SOCK_SEQPACKET socket,
with the sampling (DRM ioctls, which need a card) replaced by a fake: answers, refusals and a helper restart."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.probes.display.drm_source import ScanoutClient
from agent.probes.display.framebuffer import FrameUnavailable, Rect
from agent.probes.display.scanout_helper import BadRequest, bind, parse_request, serve

GOOD = {"v": 1, "grid": [64, 36], "black_level": 16, "black_fraction": 0.98, "regions": [[0, 0, 10, 10]]}

BAD = [
    ("not JSON", b"{"),
    ("not an object", b"[1]"),
    ("wrong version", json.dumps({**GOOD, "v": 2}).encode()),
    ("unknown key", json.dumps({**GOOD, "path": "/etc/shadow"}).encode()),
    ("grid too fine", json.dumps({**GOOD, "grid": [4096, 36]}).encode()),
    ("grid not ints", json.dumps({**GOOD, "grid": ["64", 36]}).encode()),
    ("black level out of range", json.dumps({**GOOD, "black_level": 300}).encode()),
    ("black fraction out of range", json.dumps({**GOOD, "black_fraction": 0.1}).encode()),
    ("too many regions", json.dumps({**GOOD, "regions": [[0, 0, 1, 1]] * 33}).encode()),
    ("empty region", json.dumps({**GOOD, "regions": [[0, 0, 0, 10]]}).encode()),
    ("negative region", json.dumps({**GOOD, "regions": [[-1, 0, 5, 5]]}).encode()),
    ("too large", b" " * 5000),
]


@pytest.mark.parametrize("data", [c[1] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_requests_are_refused(data: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_request(data)


def test_good_request_and_defaults() -> None:
    assert parse_request(json.dumps(GOOD).encode())["regions"] == ((0, 0, 10, 10),)
    assert parse_request(b'{"v": 1}') == {"grid": (64, 36), "black_level": 16, "black_fraction": 0.98,
                                          "regions": ()}


class FakeSampler:
    """ScanoutSampler's answer() with the DRM part faked: one lit frame, or a refusal."""

    def __init__(self) -> None:
        self.refuse = ""

    def answer(self, data: bytes) -> dict[str, Any]:
        try:
            req = parse_request(data)
        except BadRequest as e:
            return {"v": 1, "ok": False, "reason": "bad_request", "detail": str(e)}
        if self.refuse:
            return {"v": 1, "ok": False, "reason": self.refuse, "detail": "fake"}
        n = len(req["regions"])
        return {"v": 1, "ok": True, "plane": 31, "crtc": 35, "fb_id": 40, "width": 1024, "height": 768,
                "format": "XR24", "modifier": 0, "grid": 1234, "regions": [7] * n, "region_lit": [0.1] * n,
                "lit": 0.5, "black": False}


def start(path: Path, sampler: FakeSampler) -> tuple[threading.Thread, list[bool]]:
    listener = bind(str(path), 0o660)
    stop = [False]
    t = threading.Thread(target=lambda: (serve(sampler, listener, stop), listener.close()),  # type: ignore[arg-type]
                         daemon=True)
    t.start()
    return t, stop


def test_client_against_the_serve_loop(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    client = ScanoutClient(str(path), regions=(Rect(0, 0, 10, 10),))
    with pytest.raises(FrameUnavailable) as missing:
        client.sample()
    assert missing.value.reason == "missing"
    sampler = FakeSampler()
    t, stop = start(path, sampler)
    s = client.sample()
    assert (s.grid, s.regions, s.region_lit, s.bright_fraction, s.black) == (1234, (7,), (0.1,), 0.5, False)
    assert client.opens == 1 and client.layout is not None and client.layout.width == 1024 and client.fb_id == 40
    sampler.refuse = "no_handle"
    with pytest.raises(FrameUnavailable) as refused:
        client.sample()
    assert refused.value.reason == "no_handle"
    sampler.refuse = ""
    stop[0] = True
    t.join(5)
    with pytest.raises(FrameUnavailable):  # the helper went away: its socket is closed
        client.sample()
    t, stop = start(path, sampler)         # restarted: the client reconnects on the next sample
    assert client.sample().grid == 1234
    stop[0] = True
    t.join(5)


def test_probe_on_the_drm_source_without_a_card(tmp_path: Path) -> None:
    """The probe wired to the helper's socket (fake sampling) and to a card node that is not there: frames flow
    through the same rules, the missing card is one source down (counted), never an error."""
    from agent.clock import FakeClock
    from agent.probe import ProbeContext
    from agent.probes.display import Config, DisplayProbe
    from agent.records import Record
    from agent.schema import build

    sampler = FakeSampler()
    t, stop = start(tmp_path / "s.sock", sampler)
    clock = FakeClock()
    records: list[Record] = []
    cfg = build(Config, {"enabled": True, "drm_card": str(tmp_path / "card0"),
                         "drm_sampler_socket": str(tmp_path / "s.sock"), "sysfs_root": str(tmp_path / "sys"),
                         "regions": [{"name": "clock", "x": 0, "y": 0, "width": 10, "height": 10}]},
                path="probes.display")
    probe = DisplayProbe(cfg, ProbeContext(clock=clock, emit=records.append))
    try:
        probe.open()
        for _ in range(4):
            records += probe.tick()
            clock.advance(0.5)
        st = probe.status()
        assert st["sources"]["framebuffer"] == "up" and st["sources"]["drm"].startswith("down")
        assert st["framebuffer"] == "drm XR24 1024x768 32bpp"
        assert probe.counters.snapshot().get("drm_open_failed") == 1
        # The fake frame never changes: after expected_period_s x missed_periods + fb_interval_s, a freeze.
        for _ in range(6):
            records += probe.tick()
            clock.advance(0.5)
        assert [r.name for r in records if r.kind.name == "BEGIN"] == ["display.freeze"]
    finally:
        probe.close()
        stop[0] = True
        t.join(5)


class StillSampler(FakeSampler):
    """A frame that stands still (frozen, or black) until told otherwise."""

    def __init__(self, *, black: bool = False) -> None:
        super().__init__()
        self.black, self.region_crc = black, 7

    def answer(self, data: bytes) -> dict[str, Any]:
        out = super().answer(data)
        if out["ok"]:
            out.update(regions=[self.region_crc] * len(out["regions"]))
            if self.black:
                out.update(lit=0.0, black=True, region_lit=[0.0] * len(out["regions"]))
        return out


@pytest.mark.parametrize("black", [False, True], ids=["freeze", "black"])
def test_helper_restart_during_an_episode_is_not_a_recovery(tmp_path: Path, black: bool) -> None:
    """The helper dies (or restarts) while the screen is frozen or black: the agent is blind, not the screen
    recovered. The episode is held, goes on with its start when the helper is back, and ends when the screen
    moves."""
    from agent.clock import FakeClock
    from agent.probe import ProbeContext
    from agent.probes.display import Config, DisplayProbe
    from agent.records import Record
    from agent.schema import build

    path = tmp_path / "s.sock"
    sampler = StillSampler(black=black)
    t, stop = start(path, sampler)
    clock = FakeClock()
    records: list[Record] = []
    cfg = build(Config, {"enabled": True, "drm_sampler_socket": str(path), "sysfs_root": str(tmp_path / "sys"),
                         "source_retry_s": 0.5,
                         "regions": [{"name": "clock", "x": 0, "y": 0, "width": 10, "height": 10}]},
                path="probes.display")
    probe = DisplayProbe(cfg, ProbeContext(clock=clock, emit=records.append))
    name = "display.black" if black else "display.freeze"

    def run(seconds: float) -> None:
        for _ in range(int(seconds / 0.5)):
            records.extend(probe.tick())
            clock.advance(0.5)

    def kinds() -> list[tuple[str, str]]:
        return [(r.name, r.kind.name) for r in records if r.kind.name in ("BEGIN", "END")]
    try:
        probe.open()
        run(5.0)
        assert kinds() == [(name, "BEGIN")]
        stop[0] = True                      # the helper goes away
        t.join(5)
        run(5.0)
        assert probe.status()["sources"]["framebuffer"].startswith("down")
        assert kinds() == [(name, "BEGIN")]  # held: nothing said the screen recovered
        t, stop = start(path, sampler)      # back, showing the same picture
        run(3.0)
        assert probe.status()["sources"]["framebuffer"] == "up"
        assert kinds() == [(name, "BEGIN")]  # the same episode goes on
        sampler.black, sampler.region_crc = False, 8  # the screen moves (and lights up)
        run(1.0)
        assert kinds() == [(name, "BEGIN"), (name, "END")]
        end = next(r for r in records if r.kind.name == "END")
        assert end.data["ended_by"] == "recovered" and end.data["duration_s"] >= 12.0
    finally:
        probe.close()
        stop[0] = True
        t.join(5)
