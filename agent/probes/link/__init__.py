"""Connectivity-loss episodes (`[probes.link]`): tunnel, coverage hole, terminal defect or backend outage, and
how fast the terminal came back once the network did.

Sources (each optional): the uplink interface (iface.py), the modem via mmcli or an AT port (mmcli.py,
modem_at.py), GNSS via gpsd (gnss.py), the data path (datapath.py). monitor.py samples them; episode.py turns
samples into `link.loss` begin/end pairs; classify.py is the pure rule set. docs/link.md explains the rules.
"""

from __future__ import annotations

from ...probe import Probe, ProbeContext
from .settings import Config

__all__ = ["Config", "build"]


def build(cfg: Config, ctx: ProbeContext) -> list[Probe]:
    if not cfg.enabled:
        return []
    from .monitor import LinkProbe

    return [LinkProbe(cfg, ctx)]
