"""Plaintext off loopback and secret files others may read, with the real daemon and a real mosquitto.

"0.0.0.0" is not loopback by its text (the policy never resolves names) yet Linux routes it to the local
broker, so the same test sees both the refusal and, once allowed, the delivery.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from agentproc import REPO, AgentProc, base_config, write_config
from broker import Mosquitto
from recorder import Recorder

from agent.fieldcli.client import Client


def status_of(tmp: Path) -> dict:
    with Client(str(tmp / "control.sock")) as c:
        return c.request({"cmd": "status"})["status"]


def test_plaintext_off_loopback_holds_the_uplink_until_allowed(tmp_path: Path, broker: Mosquitto) -> None:
    rec = Recorder(broker.port).start()
    config = write_config(tmp_path, base_config(tmp_path, broker.port, uplink={"host": "0.0.0.0"}))
    r = subprocess.run([sys.executable, "-m", "agent", "--config", str(config), "--check-config"],
                       capture_output=True, text=True, cwd=REPO, timeout=30)
    assert r.returncode == 78 and "uplink.allow_plaintext" in r.stderr and str(config) in r.stderr, r.stderr

    agent = AgentProc(config, tmp_path / "agent.log").start()
    try:
        # Held, not exited: the probes record into the spool; nothing reaches the broker.
        agent.wait_log("uplink: not connecting", 10)
        st = status_of(tmp_path)
        up = st["uplink"]
        assert st["verdict"]["state"] == "failing" and "plaintext_refused" in {r["code"] for r in
                                                                               st["verdict"]["reasons"]}
        assert up["transport"] == "plaintext-refused" and not up["connected"]
        assert up["last_connect_error"]["code"] == "plaintext_refused"
        assert "uplink.allow_plaintext" in up["last_connect_error"]["text"]
        deadline = time.monotonic() + 15
        while (sp := status_of(tmp_path)["spool"])["records"] + sp["batches"] == 0:
            assert time.monotonic() < deadline, sp
            time.sleep(0.2)
        assert rec.batches() == [] and rec.statuses() == []

        # The operator allows it explicitly (a drop-in) and reloads: what was recorded meanwhile is delivered.
        (tmp_path / "agent.d").mkdir()
        (tmp_path / "agent.d" / "50-plain.toml").write_text("[uplink]\nallow_plaintext = true\n")
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGHUP)
        agent.wait_log("connected WITHOUT TLS", 20)
        rec.wait(lambda r: any(rc.name == "agent.start" for b in r.batches() for rc in b.records))
        births = [s for s in rec.statuses() if s.kind == "birth"]
        assert births and births[-1].fields["transport"] == "plaintext-allowed"
        st = status_of(tmp_path)  # the control socket caches the status briefly: ask until it is fresh
        deadline = time.monotonic() + 10
        while st["uplink"]["transport"] != "plaintext-allowed" and time.monotonic() < deadline:
            time.sleep(0.2)
            st = status_of(tmp_path)
        assert st["uplink"]["transport"] == "plaintext-allowed"
        assert {"code": "plaintext_allowed", "severity": "note"}.items() <= next(
            r for r in st["verdict"]["reasons"] if r["code"] == "plaintext_allowed").items()
    finally:
        assert agent.stop() == 0
        rec.stop()


def test_password_file_others_may_read_holds_the_uplink_until_fixed(tmp_path: Path, broker: Mosquitto) -> None:
    """Refused at every connect attempt, named in status and the verdict; `chmod 600` is enough (no reload)."""
    pw = tmp_path / "mqtt.pass"
    pw.write_text("s3cret\nignored second line\n")
    pw.chmod(0o644)
    config = write_config(tmp_path, base_config(tmp_path, broker.port,
                                                uplink={"username": "car", "password_file": str(pw)}))
    agent = AgentProc(config, tmp_path / "agent.log").start()
    try:
        agent.wait_log("is accessible by group or others (mode 0644)", 10)
        st = status_of(tmp_path)
        assert st["uplink"]["last_connect_error"]["code"] == "config" and str(pw) in st["uplink"]["last_error"]
        assert [r["code"] for r in st["verdict"]["reasons"]][:1] == ["uplink_config"]
        assert "s3cret" not in (tmp_path / "agent.log").read_text()
        pw.chmod(0o600)
        agent.wait_log("connected to 127.0.0.1", 20)  # mosquitto here takes any credentials
    finally:
        assert agent.stop() == 0
