"""A front radar on a simulated CAN bus: FORD_CADS MRR_Status_Radar every 30 ms (its DBC cycle), with an
alive-counter-free status frame as on the real car. Mid-demo the radar reports blockage (CAN_BLOCKAGE_MNR, as
in heavy rain or a muddy bumper) for a few seconds, and later its ECU drops off the bus for two seconds.

The bus is python-can's `udp_multicast` interface: a virtual bus like `virtual`, but shared between processes
(the agent runs as its own process in the demo). A random port keeps parallel demos and tests apart.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TITLE = "front radar on CAN: blockage for 6 s, then 2 s of silence from its ECU"
EXPECT = ["sensor.fault", "can.timeout", "can.sensor", "can.bus"]
GROUP = "239.74.163.2"
RADAR_ID = 0x101
START_DELAY_S = 4.0  # the agent starts after the parts are set up


def _dbc() -> str:
    import opendbc

    return os.path.join(os.path.dirname(opendbc.__file__), "dbc", "FORD_CADS.dbc")


class Radar(threading.Thread):
    """Sends MRR_Status_Radar on schedule; `plan(t)` says what the radar does t seconds after start."""

    def __init__(self, port: int, blocked: tuple[float, float], silent: tuple[float, float]) -> None:
        """`blocked` and `silent`: windows in seconds after start."""
        super().__init__(name="demo-radar", daemon=True)
        import can
        import cantools

        db: Any = cantools.database.load_file(_dbc(), strict=False)
        self.msg = db.get_message_by_name("MRR_Status_Radar")
        self.bus = can.Bus(interface="udp_multicast", channel=GROUP, port=port, fd=False)
        self.stop_ev = threading.Event()
        self.blocked, self.silent = blocked, silent
        self.frames = {b: self._frame(b) for b in (0, 1)}

    def _frame(self, blocked: int) -> bytes:
        values = {s.name: 0 for s in self.msg.signals} | {"CAN_XCVR_OPERATIONAL": 1, "CAN_BLOCKAGE_MNR": blocked}
        return bytes(self.msg.encode(values))

    def run(self) -> None:
        import can

        t0 = time.monotonic()
        n = 0
        while not self.stop_ev.is_set():
            t = time.monotonic() - t0
            if not self.silent[0] <= t < self.silent[1]:
                blocked = int(self.blocked[0] <= t < self.blocked[1])
                self.bus.send(can.Message(arbitration_id=RADAR_ID, data=self.frames[blocked], is_extended_id=False))
            n += 1
            self.stop_ev.wait(max(0.0, t0 + n * 0.030 - time.monotonic()))

    def close(self) -> None:
        self.stop_ev.set()
        self.join(2.0)
        self.bus.shutdown()


@contextlib.contextmanager
def scenario(workdir: Path, duration_s: float) -> Iterator[dict[str, Any]]:
    workdir.mkdir(parents=True, exist_ok=True)
    port = random.randint(20000, 60000)
    # Blockage in the first half, the silence after it; both end well before the demo does, so their
    # episode END records reach the backend.
    span = max(20.0, duration_s - START_DELAY_S)
    b0, s0 = START_DELAY_S + 0.25 * span, START_DELAY_S + 0.55 * span
    radar = Radar(port, blocked=(b0, b0 + 6.0), silent=(s0, s0 + 2.0))
    radar.start()
    try:
        can = agent_section(port)
        yield {"probes.can": {k: v for k, v in can.items() if k not in ("bus", "sensor")},
               "probes.can.bus": can["bus"], "probes.can.sensor": can["sensor"]}
    finally:
        radar.close()


def agent_section(port: int, interval_s: float = 5.0) -> dict[str, Any]:
    """The agent's [probes.can] for this radar (also used by tests/can/test_can_daemon.py)."""
    return {
        "enabled": True, "interval_s": interval_s,
        "bus": [{"name": "adas", "interface": "udp_multicast", "channel": GROUP, "dbc": _dbc(),
                 "options": {"port": port, "fd": False}}],
        "sensor": [{"name": "front_radar", "bus": "adas", "message": "MRR_Status_Radar",
                    "status": [{"signal": "CAN_BLOCKAGE_MNR", "fault_when": "== 'Radar Blockage'", "cause": "blockage",
                                "vss": "Vehicle.ADAS.ObstacleDetection.Front.Center.IsError"},
                               {"signal": "CAN_RADAR_NOT_OP", "fault_when": "== 1"}]}],
    }
