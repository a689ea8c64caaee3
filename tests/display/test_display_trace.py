"""The whole-row trace: the second look at a frame whose grid found no lit pixel. A thin dark-theme clock can sit
between grid points (the VM's dark terminal clock, no region configured, was a black episode at some times of
day); the DRM helper then traces every n-th whole row, once per buffer, and the dark-UI rule counts those pixels.
Tables for GridSampler.trace, the helper's once-per-buffer cache (card faked at the ioctl wrappers, as in
test_display_helper_planes.py), the client's parsing and the rule."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from rule_timeline import run

from agent.probes.display import drm, scanout_helper
from agent.probes.display.framebuffer import GridSampler, Layout
from agent.probes.display.rules import Signals, Thresholds, black_verdict
from agent.probes.display.scanout_helper import ScanoutSampler

W, H = 1024, 768
XRGB = (0xFF0000, 0x00FF00, 0x0000FF)


def layout(width: int = W, height: int = H, bpp: int = 32, masks: tuple[int, int, int] = XRGB) -> Layout:
    return Layout("drm XR24", width, height, bpp, width * bpp // 8, 0, True, masks, height)


def frame(strokes: list[tuple[int, int, int, int]] = (), *, pad: int = 0, width: int = W,  # type: ignore[assignment]
          height: int = H, value: int = 0xC0) -> bytes:
    """Black XRGB8888 (padding byte `pad`), with lit rectangles (x, y, w, h) in grey `value`."""
    px = bytearray(bytes((0, 0, 0, pad)) * width * height)
    for x, y, w, h in strokes:
        for yy in range(y, y + h):
            for xx in range(x, x + w):
                px[(yy * width + xx) * 4:(yy * width + xx) * 4 + 3] = bytes((value,) * 3)
    return bytes(px)


# The grid (64 x 36 on 1024 x 768) samples x = 8, 24, 40, ... and y = 10, 31, ...: a 1 px stroke at x = 3 and a
# 6 px tall bar between two grid rows are both missed by it.
CASES: list[tuple[str, dict[str, Any], float | None]] = [
    ("all black", {}, 0.0),
    ("padding byte garbage is not a colour", {"pad": 0xFF}, 0.0),
    ("a 1 px wide clock stroke between grid columns", {"strokes": [(3, 2, 1, 16)]}, None),
    ("a 6 px tall glyph between grid rows", {"strokes": [(100, 12, 5, 6)]}, None),
    ("pixels at black_level are dark", {"strokes": [(3, 2, 1, 16)], "value": 16}, 0.0),
]


@pytest.mark.parametrize(("kw", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_trace_finds_what_the_grid_misses(kw: dict[str, Any], expected: float | None) -> None:
    g = GridSampler(black_level=16)
    buf, lay = frame(**kw), layout()
    s = g.sample(buf, lay)
    assert s.bright_fraction == 0.0 and s.black  # the grid sees nothing lit in any case
    lit = g.trace(buf, lay)
    if expected is None:
        assert lit is not None and 0.0 < lit < 0.001
    else:
        assert lit == expected


def test_trace_honours_the_pan_offset() -> None:
    g = GridSampler()
    # Lit only on the second (panned-to) buffer of a double-height fbdev-like layout.
    lay = Layout("fbdev", 64, 600, 32, 256, 0, True, XRGB, 1200)
    buf = frame(width=64, height=600) + frame([(0, 0, 64, 600)], width=64, height=600)
    assert g.trace(buf, lay) == 0.0
    assert g.trace(buf, lay, yoff=600) == 1.0


def test_trace_of_packed_formats_is_not_looked_at() -> None:
    rg16 = Layout("drm RG16", 64, 32, 16, 128, 0, True, (0xF800, 0x07E0, 0x001F), 32)
    assert GridSampler().trace(bytes(64 * 32 * 2), rg16) is None


class FakeScanout:
    """One primary plane (31 on CRTC 35) showing `fb_id`, whose pixels are `frames[fb_id]`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fb_id = 40
        self.frames: dict[int, bytes] = {40: frame(), 41: frame([(3, 2, 1, 16)])}
        self.traces = 0
        monkeypatch.setattr(ScanoutSampler, "_primaries", lambda sampler: [drm.Plane(31, 35, self.fb_id)])
        monkeypatch.setattr(scanout_helper, "open_card", lambda path: os.open(os.devnull, os.O_RDONLY))
        monkeypatch.setattr(scanout_helper, "scanout_fb", lambda fd, fb_id: drm.ScanoutFb(
            fb_id, W, H, int.from_bytes(b"XR24", "little"), W * 4, 0, 0, 7))
        monkeypatch.setattr(scanout_helper, "mapped", self.mapped)
        real_trace = GridSampler.trace

        def counted(g: GridSampler, *a: Any, **k: Any) -> float | None:
            self.traces += 1
            return real_trace(g, *a, **k)
        monkeypatch.setattr(GridSampler, "trace", counted)

    @contextlib.contextmanager
    def mapped(self, fd: int, fb: drm.ScanoutFb) -> Iterator[bytes]:
        yield self.frames[fb.fb_id]


@pytest.fixture
def scanout(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeScanout, ScanoutSampler]]:
    fake = FakeScanout(monkeypatch)
    sampler = ScanoutSampler("/dev/dri/card0")
    yield fake, sampler
    sampler.close()


def ask(sampler: ScanoutSampler, black_level: int = 16) -> dict[str, Any]:
    a = sampler.answer(json.dumps({"v": 1, "black_level": black_level}).encode())
    assert a["ok"], a
    return a


def test_helper_traces_once_per_buffer(scanout: tuple[FakeScanout, ScanoutSampler]) -> None:
    fake, sampler = scanout
    assert ask(sampler)["trace_lit"] == 0.0 and fake.traces == 1
    assert ask(sampler)["trace_lit"] == 0.0 and fake.traces == 1      # the same buffer: answered from memory
    fake.fb_id = 41                                                    # a flip to a buffer with a thin clock
    lit = ask(sampler)["trace_lit"]
    assert lit > 0.0 and fake.traces == 2
    assert ask(sampler)["trace_lit"] == lit and fake.traces == 2
    assert ask(sampler, black_level=254)["trace_lit"] == 0.0 and fake.traces == 3  # another level: traced again
    fake.fb_id = 40
    assert ask(sampler)["trace_lit"] == 0.0 and fake.traces == 4


def test_helper_does_not_trace_a_frame_the_grid_sees_lit(scanout: tuple[FakeScanout, ScanoutSampler]) -> None:
    fake, sampler = scanout
    fake.frames[40] = frame([(0, 0, W, 40)])
    a = ask(sampler)
    assert a["lit"] > 0 and a["trace_lit"] is None and fake.traces == 0


TH = Thresholds(black_min_s=2.0)
DARK = {"fb_ok": True, "black_since": 0.0, "lit_fraction": 0.0, "flip_at": 0.0, "frame_changed_at": 0.0}
RULE_CASES: list[tuple[str, dict[str, Any], list[tuple[str, float]]]] = [
    ("no lit grid pixel, the trace finds the clock, flips go on: never black", {"trace_lit": 0.0003}, []),
    ("no lit pixel in the trace either: black whatever flips", {"trace_lit": 0.0}, [("begin", 2.0)]),
    ("not traced (an older helper, a packed format): black as before", {"trace_lit": None}, [("begin", 2.0)]),
]


@pytest.mark.parametrize(("extra", "expected"), [c[1:] for c in RULE_CASES], ids=[c[0] for c in RULE_CASES])
def test_rule_counts_traced_pixels(extra: dict[str, Any], expected: list[tuple[str, float]]) -> None:
    timeline = [(float(t), {"flip_at": float(t)}) for t in range(1, 10)]
    assert [(k, t) for k, t, _, _ in run(timeline, "black", {**DARK, **extra}, TH)] == expected


def test_traced_share_is_in_the_evidence() -> None:
    s = Signals(now=5.0, fb_ok=True, black_since=1.0, lit_fraction=0.0, trace_lit=0.0, flip_at=4.0,
                frame_changed_at=1.0)
    (ev,) = [e for e in black_verdict(s, TH).evidence if e.kind == "black_frame"]
    assert ev.detail["trace_lit_pct"] == 0.0 and ev.detail["flipped_since_black"] is True


class CountingBuffer(bytes):
    reads = 0

    def __getitem__(self, key: Any) -> Any:
        type(self).reads += 1
        return super().__getitem__(key)


@pytest.mark.parametrize("height", [480, 720, 768, 1080, 2160])
def test_trace_reads_at_most_trace_rows(height: int) -> None:
    from agent.probes.display.framebuffer import TRACE_ROWS
    CountingBuffer.reads = 0
    buf = CountingBuffer(bytes(16 * height * 4))
    assert GridSampler().trace(buf, layout(16, height)) == 0.0
    assert TRACE_ROWS // 2 <= CountingBuffer.reads <= TRACE_ROWS


@pytest.mark.parametrize(("answer", "expected"), [({"trace_lit": 0.0004}, 0.0004), ({"trace_lit": None}, None),
                                                  ({}, None)], ids=["traced", "not traced", "older helper"])
def test_client_reads_the_trace(tmp_path: Any, answer: dict[str, Any], expected: float | None) -> None:
    import threading

    from agent.probes.display.drm_source import ScanoutClient
    from agent.probes.display.scanout_helper import bind, serve

    class Sampler:
        def answer(self, data: bytes) -> dict[str, Any]:
            return {"v": 1, "ok": True, "plane": 31, "crtc": 35, "fb_id": 40, "width": 1024, "height": 768,
                    "format": "XR24", "modifier": 0, "grid": 1, "regions": [], "region_lit": [], "lit": 0.0,
                    "black": True, **answer}

    listener, stop = bind(str(tmp_path / "s.sock"), 0o600), [False]
    t = threading.Thread(target=serve, args=(Sampler(), listener, stop), daemon=True)
    t.start()
    try:
        assert ScanoutClient(str(tmp_path / "s.sock")).sample().trace_lit == expected
    finally:
        stop[0] = True
        t.join(5)
        listener.close()


def test_trace_stops_at_the_first_lit_chunk_and_starts_there_next_time() -> None:
    from agent.probes.display.framebuffer import TRACE_CHUNK_ROWS
    g = GridSampler()
    lay = layout(16, 768)                                   # 256 traced rows (every 3rd), 8 chunks of 32
    top, bottom = (CountingBuffer(frame([(0, y, 16, 4)], width=16, height=768)) for y in (10, 740))
    for buf, chunks in ((top, 1), (bottom, 8), (bottom, 1), (top, 2)):  # last: from the hint (7), then 0
        CountingBuffer.reads = 0
        lit = g.trace(buf, lay)
        assert lit is not None and lit > 0 and CountingBuffer.reads == chunks * TRACE_CHUNK_ROWS
    CountingBuffer.reads = 0
    assert g.trace(CountingBuffer(frame(width=16, height=768)), lay) == 0.0
    assert CountingBuffer.reads == 256                     # black: every chunk
