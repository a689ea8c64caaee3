"""The roadside path end to end: a real agent, a real sshd, `ssh car icvq ...`, and the bundle back home."""

from __future__ import annotations

import json
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from agentproc import AgentProc, base_config, write_config
from broker import Mosquitto
from fieldkit import Sshd, cli, seed_history
from recorder import Recorder


@dataclass
class Car:
    tmp: Path
    config: Path
    agent: AgentProc

    @property
    def env(self) -> dict[str, str]:
        return {"ICVQ_CONFIG": str(self.config), "ICVQ_LOG_FILE": str(self.tmp / "agent.log")}


@pytest.fixture(scope="module")
def car(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Car]:
    tmp = tmp_path_factory.mktemp("car")
    broker = Mosquitto(tmp / "broker").start()
    backend = Recorder(broker.port).start()  # without a subscriber the broker answers 0x10 and we hold data
    seed_history(tmp / "history.db")
    config = write_config(tmp, base_config(tmp, broker.port))
    agent = AgentProc(config, tmp / "agent.log").start()
    try:
        yield Car(tmp, config, agent)
    finally:
        agent.stop()
        backend.stop()
        broker.kill()


def status_json(sshd: Sshd, car: Car) -> tuple[int, dict]:
    r = sshd.ssh(["status", "--json"], car.env)
    return r.returncode, json.loads(r.stdout)


def test_status_over_ssh(sshd: Sshd, car: Car) -> None:
    deadline = time.monotonic() + 15
    while True:
        rc, st = status_json(sshd, car)
        if (st["uplink"]["connected"] and st["uplink"]["last_ack_wall"]) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert rc == 0, st["verdict"]
    assert st["running"] and st["healthy"] and st["version"] == "0.1.0"
    assert st["vehicle"].items() >= {"id": "VIN0001", "device": "hu", "fleet": "test"}.items()
    assert st["config"]["path"] == str(car.config) and st["config"]["digest"] == st["config"]["file_digest"]
    assert st["uplink"]["connected"] and st["uplink"]["broker"].startswith("127.0.0.1:")
    assert st["probes"]["system"]["state"] == "ok"
    assert {"records", "bytes", "oldest_wall_ms", "drops"} <= set(st["spool"])
    assert st["verdict"]["state"] == "healthy" and st["agent"] == "running"

    human = sshd.ssh(["status"], car.env)
    text = human.stdout.decode()
    assert human.returncode == 0, text
    assert "is RUNNING, HEALTHY" in text and "VIN0001 / hu" in text and "system  ok" in text
    assert "\x1b[" not in text  # no colour or cursor codes when stdout is not a terminal


def test_events_over_ssh(sshd: Sshd, car: Car) -> None:
    r = sshd.ssh(["events", "--since", "2h", "--name", "display.*", "--json"], car.env)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["running"] and [e["name"] for e in res["events"]] == ["display.blank"]

    r = sshd.ssh(["events"], car.env)
    text = r.stdout.decode()
    assert r.returncode == 0, r.stderr
    lines = text.splitlines()
    assert lines[0].split()[2:] == ["TYPE", "NAME", "EPISODE", "FIELDS"]
    # Oldest first, yesterday's episode included, metrics never stored.
    assert [ln.split()[3] for ln in lines[1:5]] == ["display.freeze", "display.freeze", "link.lost", "display.blank"]
    assert lines[5].split()[3] == "agent.start"  # the daemon's own start, with how the previous run ended
    assert "duration_ms=4100" in text and "system.cpu_pct" not in text


def test_flush_wait_over_ssh(sshd: Sshd, car: Car) -> None:
    r = sshd.ssh(["flush", "--wait", "--timeout", "20"], car.env)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert b"flushed" in r.stdout
    assert r.stderr == b""  # progress only on a terminal


def test_tail_live_records(car: Car) -> None:
    r = cli("tail", "--count", "3", "--json", "--name", "system.*", env=car.env, timeout=20)
    assert r.returncode == 0, r.stderr
    recs = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(recs) == 3 and all(x["name"].startswith("system.") for x in recs)
    assert all(x["type"] == "metric" for x in recs)


def test_dump_over_ssh_and_inspect(sshd: Sshd, car: Car, tmp_path: Path) -> None:
    bundle = tmp_path / "car.tgz"
    with bundle.open("wb") as f:
        r = sshd.ssh(["dump", "-o", "-"], car.env, stdout=f)
    assert r.returncode == 0, r.stderr
    assert b"bundle written to stdout; agent running" in r.stderr  # what went in, on stderr
    with tarfile.open(bundle, "r:gz") as tar:
        names = {m.name.split("/", 1)[1] for m in tar.getmembers()}
        prefix = tar.getmembers()[0].name.split("/")[0]
        manifest = json.load(tar.extractfile(f"{prefix}/manifest.json"))  # type: ignore[arg-type]
    assert prefix.startswith("icvq-VIN0001-hu-")
    assert {"manifest.json", "status.json", "history.jsonl", "spool.json", "config.json", "agent.log",
            "inventory.json", "system/uname.json", "system/host.json"} <= names
    assert manifest["members"]["agent.log"]["source"].startswith(f"log file {car.tmp / 'agent.log'}")
    assert manifest["members"]["history.jsonl"]["source"] == "5 events from the agent"  # 4 seeded + agent.start

    r = cli("inspect", str(bundle))
    text = r.stdout.decode()
    assert r.returncode == 0, r.stderr
    for want in ("icvq-VIN0001-hu-", "is RUNNING", "history: 5 events", "display.freeze x2", "link.lost",
                 "agent log: log file", "system  "):
        assert want in text, f"{want!r} missing in:\n{text}"
    s = json.loads(cli("inspect", "--json", str(bundle)).stdout)
    assert s["status"]["vehicle"]["id"] == "VIN0001" and s["events"]["count"] == 5
    assert cli("inspect", "--show", "agent.log", str(bundle)).stdout.startswith(b"")
    assert cli("inspect", str(car.config)).returncode == 65  # not a bundle: a clear error, no traceback
