"""Helpers shared by the backend tests (a module with a unique name: every test directory has a conftest)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from broker import Mosquitto
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent import wire
from agent.records import Kind, Record
from tools.ingest import rows

REPO = Path(__file__).resolve().parents[2]
BOOT = "ab" * 16
TOPIC = "icvq/v1/test/VIN1/hu/batch"
STATUS_TOPIC = "icvq/v1/test/VIN1/hu/status"


def persistent_broker(workdir: Path) -> Mosquitto:
    """mosquitto that keeps sessions and queued messages across a graceful restart (tests/broker.py persists),
    with no queue limit: the default of 1,000 queued messages per session would drop a stopped worker's share."""
    b = Mosquitto(workdir)
    # log_type subscribe: tests wait for the workers' subscriptions ("<client id> 1 <filter>" lines).
    b.extra_conf = (f"listener {b.port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
                    "log_type error\nlog_type warning\nlog_type notice\nlog_type information\nlog_type subscribe\n")
    return b


class Worker:
    """`python -m tools.ingest run` as a real process (so it can be SIGKILLed)."""

    def __init__(self, port: int, db: str, log: Path, *extra: str) -> None:
        self.args = [sys.executable, "-m", "tools.ingest", "run", "--port", str(port), "--db", db, *extra]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        f = self.log.open("ab")
        self.proc = subprocess.Popen(self.args, cwd=REPO, stdout=f, stderr=f,
                                     env={**os.environ, "PYTHONPATH": str(REPO)})
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)


def wait_log(path: Path, text: str, count: int = 1, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists() and path.read_text(errors="replace").count(text) >= count:
            return
        time.sleep(0.1)
    raise TimeoutError(f"{text!r} x{count} not in {path}")


def rec(kind: Kind, name: str, t: float, data: object, episode: int | None = None) -> Record:
    return Record(kind, name, int(t * 1000), int(t * 1000) - 1_000_000, BOOT, True, data, episode)  # type: ignore[arg-type]


def batch(seq: int, records: list[Record], sid: int = 7, vehicle: str = "VIN1") -> bytes:
    return wire.encode_batch(wire.BatchId(vehicle, "hu", sid, BOOT, seq), records)


def msg(payload: bytes, topic: str = TOPIC) -> rows.Message:
    return rows.decode(topic, payload, time.time())


def publisher(port: int) -> mqtt.Client:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def publish(c: mqtt.Client, topic: str, payload: bytes, retain: bool = False) -> None:
    c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)
