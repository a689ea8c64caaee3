"""A car with credentials (token as MQTT username, password file, TLS key) whose uplink fails: the bundle
carries none of the secrets; then the daemon stops and `status`/`events` answer from disk, read-only."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import secrets
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from agentproc import AgentProc, base_config, write_config
from broker import Mosquitto
from fieldkit import Sshd, cli, seed_history


@dataclass
class Car:
    tmp: Path
    config: Path
    agent: AgentProc
    token: str
    password: str
    key_lines: list[str]

    @property
    def env(self) -> dict[str, str]:
        return {"ICVQ_CONFIG": str(self.config), "ICVQ_LOG_FILE": str(self.tmp / "agent.log")}


@pytest.fixture(scope="module")
def car(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Car]:
    tmp = tmp_path_factory.mktemp("secretcar")
    broker = Mosquitto(tmp / "broker").start()
    token = "tok_" + secrets.token_hex(16)
    password = "pw-" + secrets.token_urlsafe(12)
    (tmp / "mqtt.pass").write_text(password + "\n")
    (tmp / "mqtt.pass").chmod(0o600)  # the agent refuses a password file others may read
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(tmp / "client.key"), "-out", str(tmp / "client.crt"), "-days", "1",
                    "-subj", "/CN=VIN0002"], check=True, capture_output=True)
    key_lines = [ln for ln in (tmp / "client.key").read_text().splitlines() if not ln.startswith("-----")]
    # TLS towards a plain-MQTT port: the uplink stays down, as on a car with a broken certificate setup.
    cfg = base_config(tmp, broker.port, vehicle={"id": "VIN0002"},
                      uplink={"username": token, "password_file": str(tmp / "mqtt.pass")},
                      uplink__tls={"cert": str(tmp / "client.crt"), "key": str(tmp / "client.key")})
    seed_history(tmp / "history.db")
    config = write_config(tmp, cfg)
    agent = AgentProc(config, tmp / "agent.log").start()
    try:
        yield Car(tmp, config, agent, token, password, key_lines)
    finally:
        agent.stop()
        broker.kill()


def test_bundle_carries_no_secret(sshd: Sshd, car: Car, tmp_path: Path) -> None:
    # Logs quote things: an error message with the token, the password and a pasted key must be scrubbed.
    with (car.tmp / "agent.log").open("a") as f:
        f.write(f"ERROR icvq.uplink: broker refused user {car.token} password {car.password}\n")
        f.write((car.tmp / "client.key").read_text())
    bundle = tmp_path / "car.tgz"
    with bundle.open("wb") as f:
        r = sshd.ssh(["dump", "-o", "-"], car.env, stdout=f)
    assert r.returncode == 0, r.stderr
    raw = bundle.read_bytes()
    plain = gzip.decompress(raw)
    members = {}
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        for m in tar.getmembers():
            members[m.name.split("/", 1)[1]] = tar.extractfile(m).read()  # type: ignore[union-attr]
    secrets_ = [car.token, car.password, *[ln for ln in car.key_lines if len(ln) >= 8]]
    for s in secrets_:
        for blob in (raw, plain, *members.values()):
            assert s.encode() not in blob, f"secret {s[:6]}... leaked"
    assert b"PRIVATE KEY" not in plain
    log = members["agent.log"].decode()
    assert "broker refused user <redacted> password <redacted>" in log
    conf = json.loads(members["config.json"])["config"]
    assert conf["uplink"]["username"] == "<redacted>"
    assert conf["uplink"]["password_file"] == str(car.tmp / "mqtt.pass")  # where, not what
    assert conf["uplink"]["tls"]["key"] == str(car.tmp / "client.key")

    text = cli("inspect", str(bundle)).stdout.decode()
    assert "VIN0002" in text and "uplink OFFLINE" in text.replace("uplink   OFFLINE", "uplink OFFLINE")


def test_flush_wait_says_why_it_cannot_finish(car: Car) -> None:
    r = cli("flush", "--wait", "--timeout", "1", env=car.env)
    assert r.returncode == 1 and b"timed out after" in r.stdout and b"uplink offline" in r.stdout


def _disk_state(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())
            if p.name.startswith(("spool.db", "history.db"))}


def test_daemon_down_answers_read_only(sshd: Sshd, car: Car, tmp_path: Path) -> None:
    up = json.loads(sshd.ssh(["status", "--json"], car.env).stdout)
    if up["running"]:
        assert up["uplink"]["connected"] is False and up["verdict"]["reasons"][0]["code"] == "offline"
    assert car.agent.stop() == 0
    before = _disk_state(car.tmp)
    # A clean stop leaves no -wal/-shm behind (the spool's disk-space reserve file stays: agent/spool.py).
    assert set(before) - {"spool.db.reserve"} == {"spool.db", "history.db"}

    r = sshd.ssh(["status", "--json"], car.env)
    assert r.returncode == 3
    st = json.loads(r.stdout)
    assert st["running"] is False and st["agent"] == "not_running" and "nothing listens on" in st["reason"]
    assert st["verdict"] is None and st["pid"] is None
    assert st["spool"]["records"] > 0 and st["spool"]["oldest_wall_ms"]  # never uploaded: still there
    assert st["history"]["events"] == 6  # 4 seeded + agent.start + agent.stop

    r = sshd.ssh(["status"], car.env)
    assert r.returncode == 3 and b"icvq-agent is NOT RUNNING" in r.stdout and b"spool    " in r.stdout

    r = sshd.ssh(["events", "--name", "display.*"], car.env)
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode()
    assert text.startswith("icvq-agent is NOT RUNNING") and "(read-only)" in text
    assert text.count("display.") == 3 and "link.lost" not in text

    with (tmp_path / "down.tgz").open("wb") as f:
        assert sshd.ssh(["dump", "-o", "-"], car.env, stdout=f).returncode == 0
    s = json.loads(cli("inspect", "--json", str(tmp_path / "down.tgz")).stdout)
    assert s["status"]["running"] is False and s["events"]["count"] == 6

    assert _disk_state(car.tmp) == before  # nothing created, nothing changed
