"""`icvq flush` once the backend is back: batches held for want of a subscriber (PUBACK 0x10, a hold of 1 s
doubling to 60 s) are resent at once, not after the hold, so `flush --wait` answers while the engineer waits.
Real mosquitto, the agent as a process, the field CLI."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from agentproc import REPO, AgentProc, base_config, write_config
from broker import Mosquitto
from recorder import Recorder

from agent.fieldcli.client import Client


def test_flush_resends_held_batches_at_once_when_the_backend_is_back(tmp_path: Path, broker: Mosquitto) -> None:
    config = write_config(tmp_path, base_config(tmp_path, broker.port))
    agent = AgentProc(config, tmp_path / "agent.log").start()
    backend: Recorder | None = None
    try:
        # No subscriber yet: the broker answers 0x10 and the hold grows; wait until the next try is further off
        # than the flush below may wait.
        deadline = time.monotonic() + 90
        while True:
            with Client(str(tmp_path / "control.sock")) as c:
                st = c.request({"cmd": "status"})["status"]
            if st.get("hold_retry_in_s", 0.0) >= 7.0:
                break
            assert time.monotonic() < deadline, st
            time.sleep(0.2)
        backend = Recorder(broker.port).start()
        r = subprocess.run([sys.executable, "-m", "agent.cli", "flush", "--wait", "--timeout", "5", "-c", str(config)],
                           capture_output=True, text=True, cwd=REPO, timeout=30)
        assert r.returncode == 0, r.stdout + r.stderr
        assert backend.batches()
    finally:
        assert agent.stop() == 0
        if backend is not None:
            backend.stop()
