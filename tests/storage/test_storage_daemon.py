"""The real daemon on small real file systems, with a real mosquitto and a subscriber: SIGTERM while the disk
is full and the broker is down, a read-only file system or a directory at the spool path at start, a
truncated spool. Each run ends with an account: records accepted (the agent's own tally, logged at stop) =
delivered (unique by batch identity) + counted drops + what the spool still holds."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from agentproc import REPO, AgentProc, base_config, write_config
from broker import Mosquitto
from recorder import Recorder
from storage_util import Mount, fill, remount


def config(tmp: Path, fs: Path, port: int) -> Path:
    cfg = base_config(tmp, port, **{"probes__system": {"interval_s": 0.1}},
                      spool={"path": str(fs / "icvq" / "spool.db"), "commit_interval_s": 0.1, "min_free_mib": 0.0},
                      agent={"nice": 0, "io_idle": False, "health_interval_s": 1.0})
    return write_config(tmp, cfg)


def accepted(log: Path) -> int:
    return sum(int(n) for n in re.findall(r"icvq-agent stopped: (\d+) records accepted", log.read_text()))


def left_in(spool: Path) -> tuple[int, dict[str, int]]:
    """(records the stopped agent's spool still holds, its persisted drop counts)."""
    db = sqlite3.connect(f"file:{spool}?mode=ro", uri=True)
    try:
        n = db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
        n += db.execute("SELECT COALESCE(SUM(n_records), 0) FROM batches").fetchone()[0]
        n += db.execute("SELECT COALESCE(SUM(n_records), 0) FROM held").fetchone()[0]
        meta = dict(db.execute("SELECT k, v FROM meta").fetchall())
        return n, json.loads(meta.get("drops", "{}"))
    finally:
        db.close()


def spool_sid(spool: Path) -> int:
    db = sqlite3.connect(f"file:{spool}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT v FROM meta WHERE k = 'sid'").fetchone()[0])
    finally:
        db.close()


def n_delivered(rec: Recorder) -> int:
    return sum(len(b.records) for b in rec.unique().values())


def assert_books_balance(rec: Recorder, spool: Path, log: Path) -> None:
    """Nothing lost: every record the agent accepted was delivered, counted as dropped, or is still held."""
    left, drops = left_in(spool)
    assert n_delivered(rec) + sum(drops.values()) + left == accepted(log)


def records(rec: Recorder, name: str) -> list[Any]:
    return [r for b in rec.unique().values() for r in b.records if r.name == name]


def status_json(conf: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "agent.cli", "status", "-c", str(conf), "--json"],
                         capture_output=True, text=True, timeout=30, cwd=str(REPO))
    return json.loads(out.stdout)


def test_sigterm_while_full_and_offline_exits_clean_and_counts_everything(
        tmp_path: Path, mount: Mount, broker: Mosquitto) -> None:
    fs = mount("3m")
    conf = config(tmp_path, fs, broker.port)
    broker.kill()
    log = tmp_path / "agent.log"
    agent = AgentProc(conf, log).start()
    time.sleep(1.0)
    filler = fill(fs)
    agent.wait_log("spool disk full", 20)
    time.sleep(1.5)                      # records pile up in memory
    t0 = time.monotonic()
    assert agent.stop() == 0
    assert time.monotonic() - t0 < 15, "within the unit's TimeoutStopSec"
    text = log.read_text()
    assert "Traceback" not in text
    assert text.count("spool disk full") == 1, "one line per state change"
    filler.unlink()
    _, drops1 = left_in(fs / "icvq" / "spool.db")
    rec = Recorder(broker.start().port).start()
    try:
        agent = AgentProc(conf, log).start()
        rec.wait(lambda r: len(records(r, "agent.start")) >= 2, 30)   # both runs' starts, in any order
        if drops1.get("shutdown.unwritable"):   # the count reaches the backend in the next run's health
            rec.wait(lambda r: any(d.data.get("shutdown.unwritable") == drops1["shutdown.unwritable"]
                                   for d in records(r, "agent.drops")), 30)
        assert sorted(r.data["previous_shutdown"] for r in records(rec, "agent.start")) == ["clean", "first"]
        assert agent.stop() == 0
        time.sleep(0.5)
    finally:
        agent.kill()
        rec.stop()
    assert_books_balance(rec, fs / "icvq" / "spool.db", log)


def test_sigterm_while_full_with_the_broker_up_delivers_from_memory_and_exits_0(
        tmp_path: Path, mount: Mount, broker: Mosquitto) -> None:
    fs = mount("3m")
    conf = config(tmp_path, fs, broker.port)
    log = tmp_path / "agent.log"
    rec = Recorder(broker.port).start()
    agent = AgentProc(conf, log).start()
    try:
        rec.wait(lambda r: bool(r.batches()), 20)
        fill(fs)
        agent.wait_log("spool disk full", 20)
        n = len(rec.unique())
        rec.wait(lambda r: len(r.unique()) > n + 2, 20)   # batches sealed in memory keep going out
        assert agent.stop() == 0
        time.sleep(0.5)
    finally:
        agent.kill()
        rec.stop()
    text = log.read_text()
    assert "Traceback" not in text and text.count("spool disk full") == 1
    assert_books_balance(rec, fs / "icvq" / "spool.db", log)


def test_read_only_file_system_at_start_still_delivers_then_recovers(
        tmp_path: Path, mount: Mount, broker: Mosquitto) -> None:
    fs = mount("4m")
    (fs / "icvq").mkdir()
    remount(fs, "ro")
    conf = config(tmp_path, fs, broker.port)
    log = tmp_path / "agent.log"
    rec = Recorder(broker.port).start()
    agent = AgentProc(conf, log).start()
    try:
        rec.wait(lambda r: bool(r.batches()), 20)    # only memory can seal now
        st = status_json(conf)
        assert st["spool"]["trouble"]["state"] == "read_only"
        assert st["verdict"]["state"] == "failing"
        assert "spool_read_only" in [r["code"] for r in st["verdict"]["reasons"]]
        rec.wait(lambda r: any("spool_read_only" in h.data.get("reasons", []) for h in records(r, "agent.health"))
                 and any(h.data.get("trouble") == "read_only" for h in records(r, "agent.spool")), 20)
        remount(fs, "rw")
        agent.wait_log("spool writable again", 20)
        time.sleep(1.0)
        assert agent.stop() == 0
        time.sleep(0.5)
    finally:
        agent.kill()
        rec.stop()
    text = log.read_text()
    assert "Traceback" not in text and text.count("spool read only") == 1
    assert_books_balance(rec, fs / "icvq" / "spool.db", log)
    sids = {b.id.sid for b in rec.unique().values()}
    assert spool_sid(fs / "icvq" / "spool.db") in sids and len(sids) == 2, "a memory sid, then the spool's"


def test_directory_at_the_spool_path_runs_in_memory_until_it_is_gone(tmp_path: Path, broker: Mosquitto) -> None:
    spool = tmp_path / "icvq" / "spool.db"
    spool.mkdir(parents=True)
    (spool / "stray").write_text("someone's file")
    conf = config(tmp_path, tmp_path, broker.port)
    log = tmp_path / "agent.log"
    rec = Recorder(broker.port).start()
    agent = AgentProc(conf, log).start()
    try:
        rec.wait(lambda r: bool(r.batches()), 20)    # only memory can seal now
        assert status_json(conf)["spool"]["trouble"]["state"] == "unopenable"
        shutil.rmtree(spool)
        agent.wait_log("spool writable again", 20)
        assert agent.stop() == 0
        time.sleep(0.5)
    finally:
        agent.kill()
        rec.stop()
    assert "Traceback" not in log.read_text()
    assert_books_balance(rec, spool, log)


def test_truncated_spool_is_quarantined_and_its_records_counted(tmp_path: Path, broker: Mosquitto) -> None:
    conf = config(tmp_path, tmp_path, broker.port)
    spool = tmp_path / "icvq" / "spool.db"
    log = tmp_path / "agent.log"
    broker.kill()
    agent = AgentProc(conf, log).start()
    time.sleep(2.0)
    assert agent.stop() == 0
    held, _ = left_in(spool)
    assert held > 0
    with spool.open("r+b") as f:
        f.truncate(spool.stat().st_size // 2)
    rec = Recorder(broker.start().port).start()
    try:
        agent = AgentProc(conf, log).start()
        rec.wait(lambda r: any("spool_corrupt" in d.data or "spool_corrupt.estimated" in d.data
                               for d in records(r, "agent.drops")), 20)
        assert agent.stop() == 0
    finally:
        rec.stop()
    d = records(rec, "agent.drops")[-1].data
    if "spool_corrupt" in d:
        assert d["spool_corrupt"] == held
    else:
        assert d["spool_corrupt.estimated"] >= held // 10
    assert records(rec, "agent.start")[-1].data["previous_shutdown"] == "unclean"
    assert list(spool.parent.glob("spool.db.corrupt-*"))


@pytest.mark.parametrize("spool_after", ["read_only", "writable"])
def test_read_only_spool_and_broker_down_at_stop_counts_go_to_the_ledger_and_reach_the_backend_next_start(
        tmp_path: Path, mount: Mount, broker: Mosquitto, spool_after: str) -> None:
    fs = mount("4m")
    (fs / "icvq").mkdir()
    remount(fs, "ro")
    conf = config(tmp_path, fs, broker.port)
    ledger = tmp_path / "drops-ledger.json"          # the default: next to control.socket
    log = tmp_path / "agent.log"
    broker.kill()
    agent = AgentProc(conf, log).start()
    agent.wait_log("spool read only", 20)
    time.sleep(1.5)                                   # records pile up in memory, nowhere to go
    assert agent.stop() == 0
    assert "Traceback" not in log.read_text()
    assert ledger.stat().st_mode & 0o777 == 0o600
    lost = json.loads(ledger.read_text())["drops"]
    n_lost = sum(v for k, v in lost.items() if k.startswith("stop_unpersisted."))
    assert n_lost > 0
    if spool_after == "writable":
        remount(fs, "rw")
    rec = Recorder(broker.start().port).start()
    try:
        agent = AgentProc(conf, log).start()          # read-only: memory mode again; writable: a normal start
        rec.wait(lambda r: any(all(d.data.get(k) == v for k, v in lost.items()) for d in records(r, "agent.drops")),
                 30)
        agent.wait_log("reported", 20)
        assert not ledger.exists(), "deleted once committed to the spool or acknowledged by the broker"
        assert agent.stop() == 0
        time.sleep(0.5)
    finally:
        agent.kill()
        rec.stop()
    assert "Traceback" not in log.read_text()
    assert not ledger.exists(), "nothing new was lost at the second stop, nothing reported twice"
    if spool_after == "writable":
        left, drops = left_in(fs / "icvq" / "spool.db")
        assert all(drops.get(k) == v for k, v in lost.items()), "the ledger's counts are in the spool's tally"
        assert n_delivered(rec) + sum(drops.values()) + left == accepted(log)
    else:   # nothing ever reached the read-only spool: both runs' records were delivered or counted
        final = max((d.data for d in records(rec, "agent.drops")), key=lambda d: sum(d.values()))
        assert n_delivered(rec) + sum(final.values()) == accepted(log)
