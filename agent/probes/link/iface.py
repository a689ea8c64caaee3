"""The uplink interface's state and counters (psutil), e.g. wwan0. A missing interface reads as down: a modem
that re-enumerates on USB takes its interface with it."""

from __future__ import annotations

import psutil

from .sample import IfaceReading


def read_iface(name: str) -> IfaceReading:
    stats = psutil.net_if_stats().get(name)
    if stats is None:
        return IfaceReading(present=False, up=False)
    io = psutil.net_io_counters(pernic=True).get(name)
    if io is None:
        return IfaceReading(present=True, up=stats.isup)
    return IfaceReading(present=True, up=stats.isup, rx_bytes=io.bytes_recv, tx_bytes=io.bytes_sent,
                        rx_errors=io.errin, tx_errors=io.errout, rx_dropped=io.dropin, tx_dropped=io.dropout)
