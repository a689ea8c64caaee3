"""`[probes.display]`: every signal is optional; an empty path or list switches that signal off.

config/probes/display.toml documents each key with its unit and default; docs/display.md says which evidence
each cause needs.
"""

from __future__ import annotations

import re

from ...dataclass_shared import dataclass
from ...errors import ConfigError
from ...schema import opt


@dataclass(frozen=True)
class RegionConfig:
    """A part of the screen that must change on its own (a clock, a speed readout)."""

    name: str = opt()
    x: int = opt(min=0, max=65535)
    y: int = opt(min=0, max=65535)
    width: int = opt(min=1, max=65535)
    height: int = opt(min=1, max=65535)
    expected_period_s: float = opt(1.0, min=0.01, max=86400.0)
    # How many periods may pass without a change before the region counts as stale. Two absorbs one late
    # redraw and the sampler's own phase.
    missed_periods: float = opt(2.0, min=1.0, max=1000.0)

    def validate(self) -> None:
        if not self.name:
            raise ConfigError("must not be empty", key="name")


@dataclass(frozen=True)
class PatternConfig:
    """A kernel log line that means the display pipeline or GPU hung, for drivers the built-ins miss."""

    driver: str = opt()
    regex: str = opt()
    name: str = ""

    def validate(self) -> None:
        if not self.driver:
            raise ConfigError("must not be empty", key="driver")
        try:
            re.compile(self.regex)
        except re.error as e:
            raise ConfigError(f"invalid regular expression: {e}", key="regex") from None


@dataclass(frozen=True)
class Config:
    enabled: bool = False

    # Framebuffer sampling ("" = off).
    fb_path: str = ""
    fb_format: str = opt("auto", choices=("auto", "fbdev", "xwd"))
    fb_interval_s: float = opt(0.5, min=0.02, max=60.0)
    grid_cols: int = opt(64, min=2, max=4096)
    grid_rows: int = opt(36, min=2, max=4096)
    black_level: int = opt(16, min=0, max=254)
    black_fraction: float = opt(0.98, min=0.5, max=1.0)
    black_min_s: float = opt(2.0, min=0.0, max=3600.0)
    regions: tuple[RegionConfig, ...] = ()

    # DRM/KMS ("" = off): flips and CRTC/connector state from the card node (no privilege), pixels through the
    # icvq-drm-sampler helper's socket (instead of fb_path).
    drm_card: str = ""
    drm_sampler_socket: str = ""
    drm_flip_poll_s: float = opt(0.1, min=0.01, max=60.0)

    # Kernel log ("" = off).
    kmsg_path: str = ""
    kmsg_from_start: bool = False
    extra_patterns: tuple[PatternConfig, ...] = ()
    gpu_hang_window_s: float = opt(30.0, min=0.0, max=3600.0)
    gpu_hang_dedupe_s: float = opt(5.0, min=0.0, max=3600.0)

    # HMI heartbeat socket ("" = off).
    heartbeat_socket: str = ""
    heartbeat_socket_mode: int = opt(0o660, min=0, max=0o777)
    heartbeat_timeout_s: float = opt(3.0, min=0.1, max=3600.0)

    # Input without redraw (no devices = off).
    input_devices: tuple[str, ...] = ()
    input_codes: tuple[int, ...] = ()
    input_timeout_s: float = opt(5.0, min=0.1, max=3600.0)
    input_presses: int = opt(1, min=1, max=100)

    # Backlight and connector ("" pattern = off).
    sysfs_root: str = "/sys"
    sysfs_interval_s: float = opt(1.0, min=0.1, max=3600.0)
    backlight: str = "*"
    connector: str = "*"
    screen_expected_on: str = opt("always", choices=("always", "heartbeat"))

    # HMI processes (empty = off).
    hmi_processes: tuple[str, ...] = ()
    process_interval_s: float = opt(2.0, min=0.1, max=3600.0)
    cpu_pegged_pct: float = opt(90.0, min=1.0, max=6400.0)
    cpu_pegged_s: float = opt(10.0, min=0.0, max=3600.0)
    d_state_s: float = opt(5.0, min=0.0, max=3600.0)

    # Periodic metrics.
    metrics_interval_s: float = opt(60.0, min=1.0, max=86400.0)
    source_retry_s: float = opt(5.0, min=0.1, max=3600.0)

    def validate(self) -> None:
        if self.fb_path and self.drm_sampler_socket:
            raise ConfigError("set fb_path or drm_sampler_socket, not both (one frame source)",
                              key="drm_sampler_socket")
        names = [r.name for r in self.regions]
        for i, n in enumerate(names):
            if n in names[:i]:
                raise ConfigError(f"duplicate region name {n!r}", key=f"regions[{i}].name")
        for i, code in enumerate(self.input_codes):
            if not 0 <= code <= 0x2FF:  # KEY_MAX
                raise ConfigError(f"not an EV_KEY code (0..767): {code}", key=f"input_codes[{i}]")
        for i, p in enumerate(self.input_devices):
            if not p:
                raise ConfigError("must not be empty", key=f"input_devices[{i}]")
        for i, p in enumerate(self.hmi_processes):
            if not p:
                raise ConfigError("must not be empty", key=f"hmi_processes[{i}]")
