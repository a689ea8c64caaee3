"""`[blackbox]`: the pre-trigger ring buffer, its snapshots and the campaigns the backend may send.

Defaults are the issue's figures: 60 s of context in memory, snapshots of 30 s before and 10 s after the
trigger, at most one per family every 10 minutes.
"""

from __future__ import annotations

from ..dataclass_shared import dataclass
from ..errors import ConfigError
from ..schema import opt

# What a snapshot (or a campaign) may capture: the ring's channels and nothing else.
CHANNELS = ("system", "procs", "kmsg", "link", "can", "display")


@dataclass(frozen=True)
class BlackboxConfig:
    enabled: bool = True
    window_s: float = opt(60.0, min=5.0, max=600.0)
    max_kib: int = opt(1536, min=64, max=65536)
    interval_s: float = opt(1.0, min=0.1, max=60.0)
    top_procs: int = opt(3, min=0, max=10)
    procs_interval_s: float = opt(5.0, min=0.5, max=600.0)
    temperatures: bool = True
    pre_s: float = opt(30.0, min=0.0, max=600.0)
    post_s: float = opt(10.0, min=0.0, max=600.0)
    families: tuple[str, ...] = ("display", "link", "can", "sensor")
    events: tuple[str, ...] = ()
    capture: tuple[str, ...] = CHANNELS
    min_interval_s: float = opt(600.0, min=0.0, max=86400.0)
    max_per_hour: int = opt(12, min=1, max=3600)
    kmsg_per_s: float = opt(5.0, min=0.1, max=1000.0)
    kmsg_burst: int = opt(20, min=1, max=10000)
    kmsg_max_chars: int = opt(160, min=16, max=1024)
    snapshot_max_kib: int = opt(8, min=1, max=40)
    campaigns: bool = True
    campaigns_path: str = ""
    max_campaigns: int = opt(8, min=0, max=64)

    def validate(self) -> None:
        if self.pre_s + self.post_s > self.window_s:
            raise ConfigError(f"pre_s + post_s ({self.pre_s + self.post_s:g}) must fit in window_s "
                              f"({self.window_s:g})", key="pre_s")
        for i, c in enumerate(self.capture):
            if c not in CHANNELS:
                raise ConfigError(f"unknown channel {c!r} (known: {', '.join(CHANNELS)})", key=f"capture[{i}]")
        for key in ("families", "events"):
            for i, v in enumerate(getattr(self, key)):
                if not v or len(v) > 128:
                    raise ConfigError("must be a non-empty name of at most 128 characters", key=f"{key}[{i}]")
