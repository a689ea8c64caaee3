"""The real daemon: a wrong sensor map stops it with exit 78 naming the key; a radar on a python-can bus
shared between processes (udp_multicast) reaches the backend through mosquitto and the ingest."""

from __future__ import annotations

import json
import random
from pathlib import Path

from agentproc import AgentProc, base_config, write_config
from canhelp import FORD
from ingest_helper import Ingest

from tools.demo_parts.can import Radar, agent_section


def test_unknown_dbc_message_exits_78_naming_the_key(tmp_path: Path) -> None:
    can = {"enabled": True, "bus": [{"name": "radar", "interface": "virtual", "dbc": FORD}],
           "sensor": [{"name": "mrr", "bus": "radar", "message": "MRR_Status_Radr"}]}
    cfg = base_config(tmp_path, 1, probes__can=can)
    agent = AgentProc(write_config(tmp_path, cfg), tmp_path / "agent.log").start(wait_started=False)
    try:
        assert agent.proc is not None and agent.proc.wait(30) == 78
    finally:
        agent.kill()
    log = (tmp_path / "agent.log").read_text()
    assert "probes.can.sensor[0].message" in log and "unknown message 'MRR_Status_Radr'" in log


def test_radar_fault_and_silence_reach_the_backend(tmp_path: Path, broker) -> None:
    port = random.randint(20000, 60000)
    ing = Ingest(tmp_path / "ingest.db", broker.port).start()
    cfg = base_config(tmp_path, broker.port, probes__can=agent_section(port, interval_s=1.0))
    agent = AgentProc(write_config(tmp_path, cfg), tmp_path / "agent.log").start()
    radar = Radar(port, blocked=(0.5, 1.5), silent=(2.0, 3.0))
    radar.start()

    def found(rows: list[tuple]) -> bool:
        # The agent starts before the radar: a first "never seen" timeout is expected and not asserted.
        got = {(name, f.get("signal")) for name, fields in rows for f in [json.loads(fields)]
               if name == "sensor.fault" or 0.8 <= f.get("duration_s", 0) <= 1.4}
        return {("sensor.fault", "CAN_BLOCKAGE_MNR"), ("can.timeout", None)} <= got

    try:
        ing.wait_for("SELECT name, fields FROM records WHERE kind = 'end' AND name IN "
                     "('sensor.fault', 'can.timeout')", found, 30)
    finally:
        radar.close()
        assert agent.stop() == 0
        ing.stop()
    assert ing.query("SELECT COUNT(*) FROM records WHERE name = 'can.sensor'")[0][0] >= 2
