"""Cost of the display probe: CPU per framebuffer sample, and the probe's share of one core at its defaults.

    python -m tools.bench.display [--samples N] [--seconds S]

Frames are XWD files generated here (the layout `Xvfb -fbdir` writes) at 1280x720 and 1920x1080. The baselines,
measured in the same run on the same mapping, hash the whole frame (hashlib.blake2b, and zlib.crc32 as the
cheapest whole-frame hash); the sampler reads a 64x36 grid plus one 240x40 expected-change region, and the
whole-row trace (GridSampler.trace, the DRM helper's second look at a frame with no lit grid pixel) every n-th row.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import logging
import mmap
import os
import platform
import random
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

from agent.clock import SystemClock
from agent.probe import ProbeContext
from agent.probes.display import Config, DisplayProbe
from agent.probes.display.framebuffer import FrameReader, GridSampler, Rect, make_xwd_header
from agent.records import Record
from agent.schema import build

SIZES = ((1280, 720), (1920, 1080))
CLOCK = Rect(0, 0, 240, 40)


def write_frame(path: Path, width: int, height: int) -> None:
    """A busy frame (noise over a gradient) so no hash or black test can take a shortcut."""
    rng = random.Random(width * height)
    row = bytearray()
    for x in range(width):
        v = x * 255 // width
        row += bytes((v, 255 - v, rng.randrange(256), 0))
    rows = [bytes(row[i:] + row[:i]) for i in range(0, 64 * 4, 4)]
    with path.open("wb") as f:
        f.write(make_xwd_header(width, height))
        for y in range(height):
            f.write(rows[y % len(rows)])


def cpu_per_call(fn: Callable[[], object], n: int) -> float:
    """CPU seconds per call (process time, so sleeping or waiting on I/O is not counted)."""
    fn()  # warm: page the mapping in, build the sampling plan
    t0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - t0) / n


def bench_frame(path: Path, width: int, height: int, samples: int) -> dict[str, float]:
    write_frame(path, width, height)
    reader = FrameReader(str(path), regions=[CLOCK])
    sparse = cpu_per_call(reader.sample, samples)
    layout = reader.layout
    assert layout is not None
    reader.close()
    # The whole-row trace the DRM helper adds when the grid finds no lit pixel, on the frames it is for: all black
    # (every chunk read) and dark with a thin clock near the bottom (the chunk found last time, read first).
    black = bytearray(layout.offset + layout.stride * layout.height)
    traces = {"trace_black": bytes(black)}
    for y in range(height - 40, height - 24):
        for x in range(width - 100, width - 20, 9):
            i = layout.offset + y * layout.stride + x * 4
            black[i:i + 3] = b"\xc0\xc0\xc0"
    traces["trace_clock"] = bytes(black)
    out: dict[str, float] = {}
    for key, buf in traces.items():
        out[key] = cpu_per_call(functools.partial(GridSampler().trace, buf, layout), max(20, samples // 50))
    with path.open("rb") as f:
        mm = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    try:
        whole_blake = cpu_per_call(lambda: hashlib.blake2b(mm).digest(), max(20, samples // 50))
        whole_crc = cpu_per_call(lambda: zlib.crc32(mm), max(20, samples // 50))
    finally:
        mm.close()
    return {"sparse": sparse, **out, "blake2b": whole_blake, "crc32": whole_crc}


def fake_sysfs(root: Path) -> None:
    for rel, text in (("class/backlight/panel/bl_power", "0"), ("class/backlight/panel/brightness", "120"),
                      ("class/backlight/panel/actual_brightness", "120"),
                      ("class/backlight/panel/max_brightness", "255"), ("class/drm/card0-DSI-1/status", "connected"),
                      ("class/drm/card0-DSI-1/enabled", "enabled"), ("class/drm/card0-DSI-1/dpms", "On")):
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text + "\n")



def time_probe_thread(probe: DisplayProbe) -> list[float]:
    """Count the CPU the probe's thread spends in receive(); returns the one-cell accumulator.

    Read inside the thread (CLOCK_THREAD_CPUTIME_ID, ns resolution; per-thread times in /proc only count
    10 ms ticks). Blocking in select() between turns costs nothing and is not counted.
    """
    spent = [0.0]
    receive = probe.receive

    def timed_receive(timeout_s: float) -> Iterable[Record]:
        c = time.thread_time()
        try:
            return receive(timeout_s)
        finally:
            spent[0] += time.thread_time() - c

    setattr(probe, "receive", timed_receive)  # noqa: B010 - instance attribute shadows the method
    return spent

def probe_share(tmp: Path, seconds: float) -> tuple[float, float]:
    """Run the real probe thread at its default rates on a 1280x720 frame, a fake sysfs tree and an idle kmsg
    FIFO; return (share of one core in %, samples taken)."""
    frame = tmp / "Xvfb_screen0"
    write_frame(frame, 1280, 720)
    fake_sysfs(tmp / "sys")
    kmsg = tmp / "kmsg"
    os.mkfifo(kmsg)
    cfg = build(Config, {"enabled": True, "fb_path": str(frame), "sysfs_root": str(tmp / "sys"),
                         "kmsg_path": str(kmsg), "heartbeat_socket": str(tmp / "hb.sock"),
                         "regions": [{"name": "clock", "x": 0, "y": 0, "width": 240, "height": 40}]},
                path="probes.display")
    probe = DisplayProbe(cfg, ProbeContext(clock=SystemClock(), emit=lambda r: None))
    # The static test frame makes the clock region go stale: that episode is expected, its log lines are not news.
    logging.getLogger("icvq.probe").setLevel(logging.ERROR)
    spent = time_probe_thread(probe)
    probe.start()
    time.sleep(1.0)
    c0, t0 = spent[0], time.monotonic()
    time.sleep(seconds)
    c1, t1 = spent[0], time.monotonic()
    probe.stop()
    return 100.0 * (c1 - c0) / (t1 - t0), (t1 - t0) / cfg.fb_interval_s


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2000, help="sparse samples per frame size")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long to run the probe thread")
    args = ap.parse_args(argv)
    defaults = Config()
    with tempfile.TemporaryDirectory(prefix="icvq-bench-display-") as d:
        tmp = Path(d)
        rows = [(w, h, bench_frame(tmp / f"frame-{w}x{h}.xwd", w, h, args.samples)) for w, h in SIZES]
        share, samples = probe_share(tmp, args.seconds)
    print("## Display probe: cost of framebuffer sampling\n")
    print(f"`python -m tools.bench.display` on {platform.machine()}, {psutil.cpu_count()} CPUs, "
          f"Python {platform.python_version()}. CPU time per call (process time), same run, same mapping. "
          f"Sampler: {defaults.grid_cols}x{defaults.grid_rows} grid + one 240x40 expected-change region, "
          "CRC32 + black test. Baselines hash every byte of the frame.\n")
    print("| frame | sparse sample (µs) | whole frame blake2b (µs) | whole frame crc32 (µs) | blake2b / sparse |")
    print("|---|---:|---:|---:|---:|")
    for w, h, r in rows:
        print(f"| {w}x{h} | {r['sparse'] * 1e6:.0f} | {r['blake2b'] * 1e6:.0f} | {r['crc32'] * 1e6:.0f} "
              f"| {r['blake2b'] / r['sparse']:.0f}x |")
    print("\nThe whole-row trace (DRM helper only, when the grid found no lit pixel, once per new buffer), same run:\n")
    print("| frame | trace, black frame (µs) | trace, dark + thin clock (µs) | black / whole frame crc32 "
          "| clock / sparse sample |")
    print("|---|---:|---:|---:|---:|")
    for w, h, r in rows:
        print(f"| {w}x{h} | {r['trace_black'] * 1e6:.0f} | {r['trace_clock'] * 1e6:.0f} "
              f"| {r['trace_black'] / r['crc32']:.2f}x | {r['trace_clock'] / r['sparse']:.1f}x |")
    rate = 1.0 / defaults.fb_interval_s
    est = 100.0 * rows[0][2]["sparse"] * rate
    print(f"\nAt the default rate ({rate:g} samples/s) the 1280x720 sampler alone costs {est:.3f} % of one core "
          f"(whole-frame blake2b would cost {100.0 * rows[0][2]['blake2b'] * rate:.2f} %).")
    print(f"Measured on the probe thread itself, running {args.seconds:g} s at its defaults (framebuffer "
          f"{rate:g}/s, backlight + connector 1/s, idle kmsg FIFO and heartbeat socket, rules every tick, "
          f"~{samples:.0f} samples): **{share:.3f} % of one core** (goal: well under 1 %).")
    big = rows[-1]
    print(f"A dark UI without a region whose clock falls between grid points, flipping once a second on "
          f"{big[0]}x{big[1]}, costs {100.0 * big[2]['trace_clock']:.3f} % of one core for its traces; a compositor "
          f"flipping black buffers (the fault) {100.0 * big[2]['trace_black'] * rate:.2f} % at {rate:g} samples/s.")


if __name__ == "__main__":
    main()
