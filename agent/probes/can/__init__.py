"""CAN sensor health: is each ADAS sensor's cyclic message on time, are its alive counter and E2E CRC
right, what do its own status signals say, and is the bus healthy. Listen-only; see docs/can.md.

Modules: config (the `[probes.can]` tables), dbc (DBC loading and startup validation), fields (signals as
bit fields), e2e (AUTOSAR P01/P02/P05), rules (pure verdicts), monitor and bus_monitor (per-sensor and
per-bus state into records), sockets (kernel raw/BCM sockets), bus_state (ip link, interface counters),
buses (readers and frame dispatch), probe (the thread).
"""

from __future__ import annotations

from ...probe import Probe, ProbeContext
from .config import BusConfig, Config, CounterConfig, E2EConfig, SensorConfig, StatusConfig

__all__ = ["BusConfig", "Config", "CounterConfig", "E2EConfig", "SensorConfig", "StatusConfig", "build", "check"]


def check(cfg: Config) -> None:
    """What build() validates beyond the config's structure (DBC files, message and signal names), without
    opening anything: for `--check-config`. Raises ConfigError naming the key path."""
    if cfg.enabled:
        from .dbc import resolve  # here: a disabled probe's config loads nothing else (issue 13)

        resolve(cfg)


def build(cfg: Config, ctx: ProbeContext) -> list[Probe]:
    """ConfigError from here (unknown DBC message or signal, missing cantools) stops the daemon with 78."""
    if not cfg.enabled:
        return []
    from .dbc import resolve
    from .probe import CanProbe

    return [CanProbe(cfg, resolve(cfg), ctx)]
