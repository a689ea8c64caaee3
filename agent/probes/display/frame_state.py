"""What the rules need from the framebuffer over time: when the grid and each region last changed, since when the
frame is black, and the counts behind the changes_per_min / black_pct metrics.

"Black" here is black-screen evidence, not just a dark frame: the grid is nearly black *and* no region (where the
live UI draws: a clock, a speed readout) shows lit pixels. A dark theme is nearly black on the grid while its clock
region is lit; it is `dark_since` but never `black_since` (docs/display.md, "Dark themes")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import field
from typing import Protocol

from ...dataclass_shared import dataclass
from .framebuffer import FrameSample, FrameUnavailable, Layout
from .rules import RegionSignal
from .settings import RegionConfig


class FrameSource(Protocol):
    """framebuffer.FrameReader (fbdev, XWD) or drm_source.ScanoutClient (DRM via the helper)."""

    opens: int
    layout: Layout | None

    def sample(self) -> FrameSample: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class FrameUpdate:
    error: FrameUnavailable | None = None
    lost: bool = False                 # the frame was readable until this sample
    reopened: bool = False             # a new framebuffer (first open, or after a restart): history restarted
    grid_changed: bool = False         # the grid outside the regions changed since the last sample
    out_of_frame: tuple[str, ...] = ()  # regions that lie outside a newly opened frame


@dataclass
class Window:
    samples: int = 0
    black: int = 0
    changes: int = 0                   # samples in which the grid or any region changed


@dataclass
class FrameTracker:
    reader: FrameSource
    regions: Sequence[RegionConfig]
    fb_interval_s: float
    grid: int | None = None
    frame_changed_at: float | None = None
    black_since: float | None = None   # dark grid and every region dark: black-screen evidence
    dark_since: float | None = None    # dark grid (a dark theme is dark but not black)
    lit_fraction: float | None = None
    region_lit: tuple[float | None, ...] = ()
    trace_lit: float | None = None     # whole-row lit share when no grid pixel was lit (DRM helper); None = not read
    lit_limit: float = 0.02            # 1 - black_fraction: at or below, a grid or region is dark
    window: Window = field(default_factory=Window)
    _opens: int = -1
    _region_crc: list[int | None] = field(default_factory=list)
    _region_changed: list[float] = field(default_factory=list)

    up: bool = False                   # the last sample succeeded

    @property
    def ok(self) -> bool:
        return self.up

    def update(self, now: float) -> FrameUpdate:
        try:
            s = self.reader.sample()
        except FrameUnavailable as e:
            # Sight lost is not a new picture: what was seen stays (when the grid and each region last changed,
            # since when the frame is black; readers gate it on `ok`). The same picture back (reader.opens
            # unchanged: the DRM helper restarted) continues that history, so a freeze keeps its start; a
            # reopened reader (an X restart, a new geometry) restarts it.
            lost, self.up = self.up, False
            return FrameUpdate(error=e, lost=lost)
        was_up, self.up = self.up, True
        reopen = self.grid is None or self.reader.opens != self._opens
        if reopen and not was_up:
            self.black_since = self.dark_since = None  # a new picture after an outage: its darkness starts now
        self.window.samples += 1
        self.lit_fraction, self.region_lit, self.trace_lit = s.bright_fraction, s.region_lit, s.trace_lit
        if s.black:
            if self.dark_since is None:
                self.dark_since = now
        else:
            self.dark_since = None
        if s.black and not any(lit is not None and lit > self.lit_limit for lit in s.region_lit):
            self.window.black += 1
            if self.black_since is None:
                self.black_since = now
        else:
            self.black_since = None
        if reopen:
            self._opens = self.reader.opens
            self.grid, self.frame_changed_at = s.grid, now
            self._region_crc = list(s.regions)
            self._region_changed = [now] * len(s.regions)
            return FrameUpdate(reopened=True, out_of_frame=tuple(
                r.name for r, crc in zip(self.regions, s.regions, strict=True) if crc is None))
        changed = False
        for i, crc in enumerate(s.regions):
            if crc != self._region_crc[i]:
                self._region_crc[i], self._region_changed[i] = crc, now
                changed = True
        grid_changed = s.grid != self.grid
        if grid_changed:
            self.grid, self.frame_changed_at = s.grid, now
        if changed or grid_changed:
            self.window.changes += 1
        return FrameUpdate(grid_changed=grid_changed)

    def region_signals(self) -> tuple[RegionSignal, ...]:
        """Regions inside the current frame; a region is stale after expected_period_s * missed_periods plus one
        sampling interval (the sampler's own phase)."""
        if not self.ok:
            return ()
        return tuple(RegionSignal(r.name, changed, r.expected_period_s * r.missed_periods + self.fb_interval_s)
                     for r, crc, changed in zip(self.regions, self._region_crc, self._region_changed, strict=True)
                     if crc is not None)

    def take_window(self) -> Window:
        w, self.window = self.window, Window()
        return w
