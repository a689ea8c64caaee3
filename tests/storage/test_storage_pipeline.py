"""The agent's pipeline (spool + real uplink) on small real file systems with a real mosquitto and a
subscriber: the spool never outgrows its cap, a full disk still delivers, recovery puts memory back through
the spool, and every record is delivered or counted. Driven step by step in-process so a test can pump
thousands of records in seconds; the daemon-level scenarios are in test_storage_daemon.py."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from broker import Mosquitto
from recorder import Recorder
from storage_util import Mount, fill

import agent.spool as spool_mod
from agent import spool_ledger
from agent.clock import SystemClock
from agent.config import from_mapping
from agent.pipeline import Pipeline
from agent.records import Kind, Record, RecordFactory
from agent.spool import Spool
from agent.uplink import Uplink


class Rig:
    def __init__(self, fs: Path, port: int, max_mib: float, min_free_mib: float = 0.0,
                 max_batch_kib: int = 16) -> None:
        self.cfg = from_mapping({
            "vehicle": {"id": "VST01", "device": "hu", "fleet": "t"},
            "uplink": {"host": "127.0.0.1", "port": port, "batch_linger_s": 0.0, "max_batch_kib": max_batch_kib,
                       "backoff_min_s": 0.1, "backoff_max_s": 1.0, "reconnect_probe_s": 0.5,
                       "keepalive_s": 5},
            "spool": {"path": str(fs / "spool.db"), "max_mib": max_mib, "min_free_mib": min_free_mib,
                      "commit_interval_s": 0.05},
            "agent": {"health_interval_s": 3600.0},
        })
        self.spool = Spool(fs / "spool.db", int(max_mib * 2**20), min_free_bytes=int(min_free_mib * 2**20))
        self.previous = self.spool.open()
        clock = SystemClock()
        self.rec = RecordFactory(clock)
        self.uplink = Uplink(self.cfg.uplink, self.cfg.vehicle, boot_id=clock.boot_id, birth_fields=dict,
                             wall_ms=lambda: int(time.time() * 1000))
        self.pipeline = Pipeline(self.cfg, self.spool, self.uplink, self.rec)
        self.uplink.start()
        self.sent = 0

    def pump(self, n: int, kind: Kind = Kind.METRIC, pad: int = 100) -> None:
        for _ in range(n):
            data = {"i": self.sent, "pad": "p" * pad}
            r = self.rec.event("test.ev", data) if kind is Kind.EVENT else self.rec.metric("test.m", data)
            self.pipeline.intake(r)
            self.sent += 1
        self.pipeline._urgent = True   # commit now, as an event would
        self.pipeline.step()

    def waiting(self) -> int:
        s = self.spool
        return s.n_records + s.n_batches + s.memory_records

    def drain(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        self.pipeline.request_flush()
        while self.waiting() and time.monotonic() < deadline:
            self.pipeline.step()
            time.sleep(0.02)
        assert not self.waiting(), f"still waiting: {self.spool.stats()}"

    def close(self) -> None:
        self.uplink.stop()
        self.spool.close()


def delivered(rec: Recorder) -> list[Record]:
    return [r for b in rec.unique().values() for r in b.records if r.name.startswith("test.")]


def drain_and_balance(rig: Rig, rec: Recorder) -> None:
    """Drain to the broker; then every record sent arrived once, under one identity, or is counted as dropped."""
    rig.drain()
    got = delivered(rec)
    assert len({r.data["i"] for r in got}) == len(got), "a record arrived under two identities"
    assert len(got) + sum(rig.spool.drops.values()) == rig.sent


@pytest.fixture
def rig_factory() -> Iterator[Any]:
    rigs: list[Rig] = []

    def make(*a: Any, **kw: Any) -> Rig:
        rigs.append(Rig(*a, **kw))
        return rigs[-1]

    yield make
    for r in rigs:
        r.uplink.stop()


def test_self_fill_stays_under_the_cap_and_every_record_is_delivered_or_counted(
        mount: Mount, broker: Mosquitto, rig_factory: Any) -> None:
    """max_mib = 1 on a 3 MiB file system while the broker is away: the spool's files never pass 1 MiB."""
    fs = mount("3m")
    broker.kill()
    rig = rig_factory(fs, broker.port, 1.0)
    worst = 0
    for _ in range(300):
        rig.pump(40)
        worst = max(worst, rig.spool.disk_bytes())
    assert worst <= 2**20, f"spool files reached {worst} bytes"
    assert rig.spool.trouble is None and rig.spool.drops.get("spool_full.metric", 0) > 0
    rec = Recorder(broker.start().port).start()
    try:
        drain_and_balance(rig, rec)
    finally:
        rec.stop()
        rig.close()


def test_full_disk_with_broker_up_still_delivers_then_recovers_through_the_spool(
        mount: Mount, broker: Mosquitto, rig_factory: Any, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    fs = mount("2m")
    rec = Recorder(broker.port).start()
    rig = rig_factory(fs, broker.port, 64.0)
    try:
        deadline = time.monotonic() + 10
        while not rig.uplink.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        rig.pump(20, Kind.EVENT)
        filler = fill(fs)
        caplog.set_level(logging.INFO, logger="icvq")
        for _ in range(40):
            rig.pump(25, Kind.EVENT, pad=300)
            time.sleep(0.01)
        assert rig.spool.degraded and rig.spool.trouble is not None
        assert rig.spool.trouble.state == "disk_full"
        rec.wait(lambda r: any(b.id.sid != rig.spool.sid for b in r.batches()), 15)
        assert rig.pipeline.counters.snapshot().get("step_errors", 0) == 0
        monkeypatch.setattr(spool_mod, "RETRY_DISK_S", 0.0)
        filler.unlink()
        rig.pump(10, Kind.EVENT)
        assert not rig.spool.degraded and rig.spool.trouble is None
        rig.pump(10, Kind.EVENT)
        rig.drain()
        time.sleep(0.5)
        got = sorted(r.data["i"] for r in delivered(rec))
        assert got == list(range(rig.sent)), "every event delivered exactly once"
        assert not rig.spool.drops
        spool_logs = [r for r in caplog.records if r.name == "icvq.spool" and r.levelno >= logging.WARNING]
        assert len(spool_logs) <= 3, [r.getMessage() for r in spool_logs]   # degraded once, recovered once
        assert not any(r.exc_info for r in caplog.records)
    finally:
        rec.stop()
        rig.close()


def test_headroom_is_kept_while_another_writer_fills_the_disk(mount: Mount, broker: Mosquitto,
                                                              rig_factory: Any) -> None:
    fs = mount("6m")
    broker.kill()
    rig = rig_factory(fs, broker.port, 64.0, min_free_mib=2.0)
    fill(fs, leave=4 << 20)                 # another service took a third of the partition
    from agent import spool_disk

    lowest = 1 << 40
    for _ in range(150):
        rig.pump(100)
        lowest = min(lowest, spool_disk.free_bytes(fs) or 0)
    assert lowest >= (2 << 20) - 8192, f"free space fell to {lowest}"
    assert rig.spool.drops.get("headroom.metric", 0) > 0
    assert rig.spool.trouble is not None and rig.spool.trouble.state == "low_headroom"
    rec = Recorder(broker.start().port).start()
    try:
        drain_and_balance(rig, rec)
    finally:
        rec.stop()
        rig.close()


def test_a_ledger_committed_before_a_crash_is_not_counted_twice(tmp_path: Path) -> None:
    ledger = tmp_path / "run" / "drops-ledger.json"
    led = spool_ledger.write(ledger, {"stop_unpersisted.metric": 7}, {"pid": 1}, 0)
    assert ledger.stat().st_mode & 0o777 == 0o600
    sp = Spool(tmp_path / "spool.db", 2**20, ledger_path=ledger)
    sp.open()
    assert sp.drops == {"stop_unpersisted.metric": 7} and not ledger.exists(), "committed, then deleted"
    sp.close()
    # A crash between that commit and the unlink: the same ledger is back, its id already in meta.
    ledger.write_text(json.dumps({"id": led.id, "drops": led.drops}))
    db = sqlite3.connect(tmp_path / "spool.db")
    assert db.execute("SELECT v FROM meta WHERE k = 'ledger'").fetchone()[0] == led.id
    db.close()
    sp = Spool(tmp_path / "spool.db", 2**20, ledger_path=ledger)
    sp.open()
    assert sp.drops == {"stop_unpersisted.metric": 7} and not ledger.exists(), "recognised by its id"
    sp.close()
