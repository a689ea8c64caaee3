"""Screen freeze and black screen on the head unit: detect, time and explain (issue 4, docs/display.md).

Signals, each optional: frame sampling (fbdev, an Xvfb XWD file, or a DRM/KMS scanout through the
icvq-drm-sampler helper, issue 12), DRM page flips and CRTC/connector state, the kernel log (DRM/GPU hang
messages), an HMI heartbeat socket, input without redraw (evdev), backlight and connector state (sysfs) and the
HMI processes. Records: episodes `display.freeze` and `display.black` (BEGIN/END with cause and evidence), events
`display.gpu_hang`, `display.hmi_unresponsive`, `display.backlight_fault`, and periodic metrics
`display.changes_per_min`, `display.black_pct`, `display.fps_estimate`, `display.flips_per_min`.
"""

from __future__ import annotations

from typing import Any

from ...probe import Probe, ProbeContext
from .settings import Config, PatternConfig, RegionConfig

__all__ = ["Config", "DisplayProbe", "PatternConfig", "RegionConfig", "build"]


def build(cfg: Config, ctx: ProbeContext) -> list[Probe]:
    if not cfg.enabled:
        return []
    # Imported here, not at the top: reading the config must not load the probe (3 MiB with psutil, issue 13).
    from .probe import DisplayProbe

    return [DisplayProbe(cfg, ctx)]


def __getattr__(name: str) -> Any:
    if name == "DisplayProbe":
        from .probe import DisplayProbe

        return DisplayProbe
    raise AttributeError(name)
