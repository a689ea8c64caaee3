"""The SQLite store and the decode step, without a broker: dedup on the batch identity, derived tables,
untrusted payloads becoming dead letters."""

from __future__ import annotations

import sqlite3
import zlib
from pathlib import Path

import msgpack
from backend_util import BOOT, STATUS_TOPIC, batch, msg, rec

from agent import wire
from agent.records import Kind
from tools.ingest.store import SqliteStore


def test_redelivered_batch_is_stored_once(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "i.db")
    b1 = batch(1, [rec(Kind.METRIC, "cpu", 1000.0, 5.0), rec(Kind.METRIC, "cpu", 1001.0, 6.0)])
    b2 = batch(2, [rec(Kind.METRIC, "cpu", 1002.0, 7.0)])
    r = s.write([msg(b1), msg(b1), msg(b2)])  # a resend inside one group
    assert (r.stored, r.duplicates, r.records) == (2, 1, 3)
    r = s.write([msg(b2), msg(b1)])  # redelivery later
    assert (r.stored, r.duplicates) == (0, 2)
    assert s.counts()["records"] == 3
    # Same seq, different sid (a new spool) is a different batch.
    assert s.write([msg(batch(1, [rec(Kind.METRIC, "cpu", 1003.0, 1)], sid=8))]).stored == 1


def test_episodes_boots_and_software_are_derived(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "i.db")
    birth = wire.encode_status("birth", "VIN1", "hu", BOOT, 999_000, {
        "agent": "0.1.0", "inventory": {"os": "x", "components": {"hmi": "3.2.1"}}})
    b1 = batch(1, [rec(Kind.METRIC, "cpu", 1000.0, 1.0), rec(Kind.BEGIN, "display.freeze", 1001.0, {"app": "hmi"}, 5)])
    b2 = batch(2, [rec(Kind.END, "display.freeze", 1004.5, {"duration_s": 3.5}, 5), rec(Kind.METRIC, "cpu", 1010.0, 2)])
    s.write([msg(b2), msg(birth, STATUS_TOPIC)])  # END before BEGIN: order must not matter
    s.write([msg(b1), msg(birth, STATUS_TOPIC)])  # retained birth delivered again
    assert s.query("SELECT name, t_begin, t_end, duration_s FROM episodes") == [("display.freeze", 1001.0, 1004.5, 3.5)]
    assert s.query("SELECT first_t, last_t, n_records FROM boots") == [(1000.0, 1010.0, 4)]
    assert sorted(s.query("SELECT component, version FROM software")) == [("agent", "0.1.0"), ("hmi", "3.2.1")]
    assert s.query("SELECT COUNT(*) FROM status") == [(1,)]


def test_hostile_payloads_become_dead_letters(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "i.db")
    good = batch(1, [rec(Kind.METRIC, "cpu", 1000.0, 1.0)])
    bomb = msgpack.packb({"v": 1, "k": "z", "z": zlib.compress(b"\0" * (8 << 20))})
    huge_sid = msgpack.unpackb(wire.encode_batch(wire.BatchId("VIN1", "hu", 7, BOOT, 1),
                                                 [rec(Kind.METRIC, "cpu", 1000.0, 1.0)], compress="never"), raw=False)
    huge_sid["sid"] = 2**64 - 1
    cases = {
        b"": "msgpack", b"\xc1": "msgpack", msgpack.packb([1, 2]): "not_a_map",
        msgpack.packb({"v": 3, "k": "b"}): "version", bomb: "too_large",
        b"\0" * (2 << 20): "too_large", msgpack.packb(huge_sid): "out_of_range",
        msgpack.packb({"v": 1, "k": "b", "veh": "VIN1"}): "missing_key",
    }
    msgs = [msg(p) for p in cases] + [msg(good, "icvq/v1/test/OTHER/hu/batch"), msg(good)]
    assert [m.reason for m in msgs[:-2]] == list(cases.values())
    assert msgs[-2].reason == "topic_mismatch"  # a car publishing under another car's topic
    r = s.write(msgs)
    assert (r.stored, r.dead) == (1, len(cases) + 1)
    reasons = dict(s.query("SELECT reason, COUNT(*) FROM dead_letter GROUP BY reason"))
    assert reasons["too_large"] == 2 and reasons["topic_mismatch"] == 1


def test_opens_a_database_of_the_minimal_ingest(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "old.db")
    db.executescript("""
        CREATE TABLE batches (vehicle TEXT NOT NULL, device TEXT NOT NULL, sid INTEGER NOT NULL, boot TEXT NOT NULL,
            seq INTEGER NOT NULL, fleet TEXT, received REAL NOT NULL, n_records INTEGER NOT NULL,
            synced INTEGER NOT NULL, PRIMARY KEY (vehicle, device, sid, boot, seq));
        CREATE TABLE status (vehicle TEXT NOT NULL, device TEXT NOT NULL, kind TEXT NOT NULL, t REAL NOT NULL,
            boot TEXT NOT NULL, fields TEXT NOT NULL, received REAL NOT NULL);
        CREATE TABLE dead_letter (received REAL NOT NULL, topic TEXT, reason TEXT, size INTEGER, head BLOB);
        INSERT INTO status VALUES ('V', 'hu', 'birth', 1, 'b', '{}', 1), ('V', 'hu', 'birth', 1, 'b', '{}', 2);
    """)
    db.close()
    s = SqliteStore(tmp_path / "old.db")
    assert s.query("SELECT COUNT(*) FROM status") == [(1,)]
    assert s.write([msg(batch(1, [rec(Kind.METRIC, "cpu", 1000.0, 1.0)])), msg(b"junk")]).stored == 1
    assert s.query("SELECT t_first FROM batches") == [(1000.0,)]


def test_workers_racing_to_create_one_sqlite_file_all_start(tmp_path: Path) -> None:
    """Two workers started together on a new file used to die with "database is locked" (WAL switch race)."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    code = (f"import sys; sys.path.insert(0, {str(repo)!r}); from tools.ingest.store import SqliteStore; "
            f"SqliteStore({str(tmp_path / 'race.db')!r})")
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE) for _ in range(8)]
    results = [(p.wait(60), p.stderr.read() if p.stderr else b"") for p in procs]
    assert all(rc == 0 for rc, _ in results), results


def test_old_v1_batches_still_decode_store_and_dedup_as_before(tmp_path: Path) -> None:
    """Wire v2 (issue 13) changed the compression, not the identity: a spool written by an older agent resends
    its sealed v1 bytes after the upgrade (the agent never re-encodes a sealed batch), the backend stores them
    once, and they give the same rows as the v2 encoding of the same records."""
    golden = Path(__file__).resolve().parents[1] / "golden"
    topic = "icvq/v1/test/VIN0001/hu/batch"
    v1, v2 = (golden / "v1" / "batch_small.msgpack").read_bytes(), (golden / "batch_small.msgpack").read_bytes()
    old, new = SqliteStore(tmp_path / "old.db"), SqliteStore(tmp_path / "new.db")
    r = old.write([msg(v1, topic), msg(v1, topic)])
    assert (r.stored, r.duplicates, r.dead) == (1, 1, 0)
    assert new.write([msg(v2, topic)]).stored == 1
    q = "SELECT * FROM records ORDER BY 1, 2, 3"
    assert old.query(q) == new.query(q) and len(old.query(q)) == 6
