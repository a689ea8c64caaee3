"""Shared by the display tests: generated XWD frames and the real Xvfb stand-in."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.probes.display.framebuffer import FrameReader, Rect, make_xwd_header
from agent.records import Record
from tools.demo_parts.display import CLOCK_REGION, Xvfb


def write_xwd(path: Path, width: int, height: int, rgb: tuple[int, int, int] = (255, 255, 255)) -> None:
    path.write_bytes(make_xwd_header(width, height) + bytes((rgb[2], rgb[1], rgb[0], 0)) * width * height)


def poke_pixel(path: Path, width: int, x: int, y: int, rgb: tuple[int, int, int]) -> None:
    """Change one pixel in place, as an X server writing into its mapped file does."""
    head = len(make_xwd_header(width, 1))
    with open(path, "r+b") as f:
        f.seek(head + (y * width + x) * 4)
        f.write(bytes((rgb[2], rgb[1], rgb[0], 0)))


def wait_for(pred: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def clock_ticks(xvfb: Xvfb) -> Callable[[], bool]:
    """True once the clock region has changed since the last call (polled much faster than the probe)."""
    reader = FrameReader(str(xvfb.fb_path), regions=[Rect(0, 0, CLOCK_REGION["width"], CLOCK_REGION["height"])])
    last = [reader.sample().regions[0]]

    def changed() -> bool:
        now = reader.sample().regions[0]
        moved, last[0] = now != last[0], now
        return moved
    return changed


def fields(rec: Record) -> dict[str, Any]:
    """An event or episode record's fields (metrics carry a number instead)."""
    assert isinstance(rec.data, dict), rec
    return rec.data
