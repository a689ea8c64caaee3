"""Campaigns with real parts: mosquitto, the agent daemon, the ingest, and a kernel log FIFO as the trigger.

One run: a campaign published (retained) while the agent runs makes a trigger it did not have take
snapshots, without a restart; malformed campaigns come back rejected with the key at fault; a campaign with a
near end date is retired by the agent itself; the running campaign survives an agent restart while the
broker is down (restored from the agent's own file) and keeps capturing, and what it captured offline
arrives when the broker is back.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from agentproc import REPO, AgentProc, base_config, write_config
from ingest_helper import Ingest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent import wire
from agent.blackbox.columns import expand
from tools.ingest.campaign import retained
from tools.localbroker import Mosquitto

HANG = (b"3,%d,912345678,-;[drm:drm_atomic_helper_wait_for_flip_done [drm_kms_helper]] "
        b"*ERROR* [CRTC:51:crtc-0] flip_done timed out\n")
FLEET, VEH = "test", "VIN0001"


class Backend:
    """The backend's side of the campaign topics: publish documents, collect the agent's acknowledgements."""

    def __init__(self, port: int) -> None:
        self.acks: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        self.c.on_message = lambda c, u, m: self.acks.put(json.loads(m.payload))
        self.c.connect("127.0.0.1", port)
        self.c.subscribe(f"icvq/v1/{FLEET}/{VEH}/hu/campaign", qos=1)
        self.c.loop_start()

    def publish(self, cid: str, doc: dict[str, Any] | bytes, vehicle: bool = False) -> None:
        topic = f"icvq/v1/{FLEET}/{VEH}/_campaigns/{cid}" if vehicle else f"icvq/v1/{FLEET}/_campaigns/{cid}"
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        self.c.publish(topic, body, qos=1, retain=True).wait_for_publish(5)

    def ack(self, cid: str, state: str, timeout_s: float = 15.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            while True:
                try:
                    self.seen.append(self.acks.get_nowait())
                except queue.Empty:
                    break
            for a in self.seen:
                if a["id"] == cid and a["state"] == state:
                    return a
            time.sleep(0.1)
        raise TimeoutError(f"no {state} acknowledgement for {cid}: {self.seen}")

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _hang(fifo: Path, seq: int) -> None:
    fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, HANG % seq)
    finally:
        os.close(fd)


def _status(cfg_path: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "agent.cli", "status", "-c", str(cfg_path), "--json"],
                         capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                         timeout=30)
    return json.loads(out.stdout)


def test_campaign_lifecycle(tmp_path: Path, broker: Mosquitto) -> None:
    fifo = tmp_path / "kmsg"
    os.mkfifo(fifo)
    display = {"enabled": True, "kmsg_path": str(fifo), "gpu_hang_dedupe_s": 0.0}  # every hang line an event
    cfg = base_config(tmp_path, broker.port, probes__display=display,
                      blackbox={"window_s": 10.0, "pre_s": 2.0, "post_s": 1.0, "families": [], "interval_s": 0.5})
    cfg_path = write_config(tmp_path, cfg)
    ing = Ingest(tmp_path / "ingest.db", broker.port).start()
    agent = AgentProc(cfg_path, tmp_path / "agent.log").start()
    backend = Backend(broker.port)
    snaps = "SELECT episode, fields FROM records WHERE name = 'blackbox.snapshot' ORDER BY t"
    now = time.time()
    try:
        agent.wait_log("display source kmsg up", 10)
        _hang(fifo, 1)                                   # no trigger for it yet: no snapshot
        agent.wait_log("GPU/display hang reported", 5)
        hangs = {"name": "display.gpu_hang", "kinds": ["event"],
                 "where": [{"field": "driver", "op": "eq", "value": "drm"}]}
        backend.publish("gpu-hangs", {"id": "gpu-hangs", "trigger": hangs, "capture": ["system", "kmsg"],
                                      "pre_s": 2, "post_s": 1, "min_interval_s": 0, "end": now + 3600,
                                      "target": {"vehicles": [VEH], "software": {"agent": ["0.1.0"]}}})
        backend.publish("short", {"id": "short", "trigger": {"family": "link"}, "pre_s": 2, "post_s": 1,
                                  "end": now + 6}, vehicle=True)
        assert backend.ack("gpu-hangs", "active")["campaigns"]
        backend.ack("short", "active")
        # Malformed campaigns: wrong type, unknown key, absurd size — refused with the reason.
        backend.publish("bad-type", {"id": "bad-type", "trigger": hangs, "pre_s": "lots", "end": now + 60})
        backend.publish("bad-key", {"id": "bad-key", "trigger": hangs, "end": now + 60, "shell": "reboot"})
        backend.publish("bad-size", {"id": "bad-size", "trigger": hangs, "end": now + 60,
                                     "description": "x" * 20000})
        assert backend.ack("bad-type", "rejected")["reason"].startswith("pre_s: expected a number")
        assert backend.ack("bad-key", "rejected")["reason"].startswith("shell: unknown key")
        assert "exceeds 16384" in backend.ack("bad-size", "rejected")["reason"]
        time.sleep(0.5)
        _hang(fifo, 2)                                   # now it takes a snapshot, without a restart
        rows = ing.wait_for(snaps, lambda r: len(r) >= 1, 20)
        d = json.loads(rows[0][1])
        assert d["campaigns"] == ["gpu-hangs"] and d["trigger"] == "display.gpu_hang"
        assert any("flip_done timed out" in line for line in expand(d["kmsg"]["msg"])), d["kmsg"]
        assert set(d) >= {"system", "kmsg"} and "link" not in d
        assert backend.ack("short", "retired", 20)["reason"] == "end date passed"
        birth = wire.decode(retained("127.0.0.1", broker.port, [f"icvq/v1/{FLEET}/{VEH}/hu/status"], 0.5)
                            [f"icvq/v1/{FLEET}/{VEH}/hu/status"])
        assert isinstance(birth, wire.Status) and birth.fields["campaigns"] == ["gpu-hangs"]  # republished
        st = _status(cfg_path)["blackbox"]
        assert [c["id"] for c in st["campaigns"]] == ["gpu-hangs"]
        assert agent.stop() == 0
        # Restart with the broker down: the campaign comes back from the agent's own file.
        broker.kill()
        agent = AgentProc(cfg_path, tmp_path / "agent2.log").start()
        agent.wait_log("campaign gpu-hangs (revision 0) restored: active", 5)
        agent.wait_log("display source kmsg up", 10)
        assert [c["id"] for c in _status(cfg_path)["blackbox"]["campaigns"]] == ["gpu-hangs"]
        _hang(fifo, 3)
        agent.wait_log("GPU/display hang reported", 5)
        time.sleep(2.0)                                  # its post window passes offline
        broker.start()
        rows = ing.wait_for(snaps, lambda r: len(r) >= 2, 30)
        assert json.loads(rows[1][1])["campaigns"] == ["gpu-hangs"]
    finally:
        backend.close()
        assert agent.stop() == 0
        ing.stop()
    down = _status(cfg_path)  # the agent is stopped: `icvq status` reads the campaigns from its file
    assert down["agent"] == "not_running" and [c["id"] for c in down["blackbox"]["campaigns"]] == ["gpu-hangs"]
    stored = json.loads((tmp_path / "campaigns.json").read_text())
    assert [c["id"] for c in stored["campaigns"]] == ["gpu-hangs"]
    assert oct((tmp_path / "campaigns.json").stat().st_mode & 0o777) == "0o600"
    # The campaign's snapshot total went on across the restart (max_snapshots is a total, not per run).
    assert json.loads((tmp_path / "blackbox-budget.json").read_text())["counts"]["campaign:gpu-hangs"] == 2
