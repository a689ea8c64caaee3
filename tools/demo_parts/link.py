"""A car drives through a 60 s tunnel: GNSS (real gpsd fed by gpsfake), the cellular modem (an AT server on a
pty) and the data path (a TCP gate the probe watches; the demo's broker stays up) go together and come back
together. Time runs a few times faster than real so the tunnel fits the demo; the agent's time thresholds are
divided by the same factor (tools/sim/link_runner.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tools.sim.link_runner import LinkSim
from tools.sim.scenarios import tunnel

TITLE = "60 s tunnel at 80 km/h: GNSS, cellular and data path lost and back together (time compressed)"
EXPECT = ["link.loss", "link.rsrp_dbm", "link.connected", "link.registration"]
START_DELAY_S = 4.0  # the agent starts after this part is set up; let it see the link up before the tunnel


@contextlib.contextmanager
def scenario(workdir: Path, duration_s: float) -> Iterator[dict[str, dict[str, Any]]]:
    sc = tunnel()
    # Play the route in the first ~60% of the demo so the episode's END reaches the backend with time to spare.
    speed = max(2.0, sc.duration_s / max(10.0, 0.6 * duration_s - START_DELAY_S))
    sim = LinkSim(sc, workdir, speed=speed, modem="at", tcp_gate=True).prepare()
    try:
        cfg = sim.probe_config(interval_s=0.2, metrics_interval_s=5.0,
                               modem={"interval_s": 1.0, "episode_interval_s": 0.2},
                               datapath={"tcp_interval_s": 1.0, "tcp_episode_interval_s": 0.2})
        sim.start(delay_s=START_DELAY_S)
        yield {"probes.link": cfg}
    finally:
        sim.stop()
