"""The data path: the agent's own MQTT session (ctx.uplink()) and an optional TCP connect probe with RTT."""

from __future__ import annotations

import socket
import time

from ...dataclass_shared import dataclass
from ...probe import UplinkView


@dataclass(frozen=True)
class TcpResult:
    ok: bool
    rtt_ms: float | None = None


def uplink_up(view: UplinkView) -> bool | None:
    """None when the daemon runs without an uplink (the view's broker is empty)."""
    return view.connected if view.broker else None


def ack_time(view: UplinkView, now: float, mono_now: float) -> float | None:
    """When the last PUBACK arrived, moved onto the probe's clock. The uplink stamps time.monotonic(); the
    probe clock may be CLOCK_BOOTTIME or a fake, so carry the age, not the stamp."""
    if view.last_ack_mono is None:
        return None
    return now - max(0.0, mono_now - view.last_ack_mono)


def tcp_probe(host: str, port: int, timeout_s: float) -> TcpResult:
    t0 = time.monotonic()
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return TcpResult(True, round((time.monotonic() - t0) * 1000, 1))
    except OSError:
        return TcpResult(False)
