"""The spool: bounded, priority eviction, counted drops, crash/power-cut survival, disk full and read-only."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import wire
from agent.records import Kind, Record
from agent.spool import Spool

BOOT = "ab" * 16


def rec(i: int, kind: Kind = Kind.METRIC, size: int = 0) -> Record:
    data: object = float(i) if kind is Kind.METRIC and not size else {"i": i, "pad": "x" * size}
    ep = i if kind in (Kind.BEGIN, Kind.END) else None
    return Record(kind, "test.x", 1_700_000_000_000 + i, 10_000 + i, BOOT, True, data, ep)  # type: ignore[arg-type]


def bid(boot: str, seq: int) -> wire.BatchId:
    return wire.BatchId("V", "d", 1, boot, seq)


def drain(sp: Spool, max_bytes: int = 64 * 1024) -> list[wire.Batch]:
    out = []
    while (b := sp.seal(bid, max_bytes)) is not None:
        decoded = wire.decode(b.payload)
        assert isinstance(decoded, wire.Batch)
        out.append(decoded)
        sp.ack([b.seq])
    return out


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    sp = Spool(tmp_path / "spool.db", 256 * 1024)
    sp.open()
    yield sp
    sp.close()


def test_put_seal_ack_roundtrip(spool: Spool) -> None:
    spool.put([rec(i) for i in range(100)])
    assert spool.n_records == 100
    batches = drain(spool, 1024)
    assert len(batches) > 1, "a small max_bytes must split into several batches"
    assert all(len(wire.encode_batch(b.id, list(b.records))) <= 1024 for b in batches)
    assert [r.data for b in batches for r in b.records] == [float(i) for i in range(100)]
    seqs = [b.id.seq for b in batches]
    assert seqs == list(range(1, len(seqs) + 1))
    assert spool.n_records == 0 and spool.n_batches == 0


def test_sealed_batch_is_resent_byte_identical_after_reopen(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.db", 1 << 20)
    sp.open()
    sp.put([rec(i) for i in range(10)])
    b = sp.seal(bid, 4096)
    assert b is not None
    sp.close()
    sp2 = Spool(tmp_path / "s.db", 1 << 20)
    sp2.open()
    again = sp2.sealed()
    assert [(x.seq, x.payload) for x in again] == [(b.seq, b.payload)]
    sp2.put([rec(99)])
    nxt = sp2.seal(bid, 4096)
    assert nxt is not None and nxt.seq == b.seq + 1, "seq never repeats across restarts"
    assert sp2.sid == sp.sid


def test_cap_evicts_metrics_before_events_oldest_first(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.db", 512 * 1024)
    sp.open()
    sp.put([rec(i, Kind.EVENT, size=1000) for i in range(100)])          # ~100 KiB of events
    sp.put([rec(1000 + i, Kind.METRIC, size=1000) for i in range(200)])  # ~200 KiB of metrics
    sp.put([rec(5000 + i, Kind.METRIC, size=1000) for i in range(100)])  # over the database's share
    assert sp.bytes <= sp.max_bytes
    left = drain(sp)
    kept = [r for b in left for r in b.records]
    events = [r for r in kept if r.kind is Kind.EVENT]
    metrics = [r.data["i"] for r in kept if r.kind is Kind.METRIC]  # type: ignore[index]
    assert len(events) == 100, "no event may go while metrics remain"
    assert metrics == sorted(metrics) and metrics[-1] == 5099, "newest data kept, oldest metrics dropped"
    assert sp.drops.get("spool_full.metric", 0) == 300 - len(metrics)
    sp.close()
    sp2 = Spool(tmp_path / "s.db", 512 * 1024)
    sp2.open()
    assert sp2.drops["spool_full.metric"] == 300 - len(metrics), "drop counts survive restarts"


def test_cap_then_events_oldest_first(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.db", 256 * 1024)
    sp.open()
    for i in range(400):
        sp.put([rec(i, Kind.EVENT, size=600)])
    kept = [r.data["i"] for b in drain(sp) for r in b.records]  # type: ignore[index]
    assert kept == list(range(400 - len(kept), 400))
    assert sp.drops["spool_full.event"] == 400 - len(kept)


def test_invalid_and_oversize_records_are_counted_not_fatal(spool: Spool) -> None:
    bad = Record(Kind.EVENT, "", 1, 1, BOOT, True, {})
    unpackable = Record(Kind.EVENT, "x", 1, 1, BOOT, True, {"s": {1, 2}})  # type: ignore[dict-item]
    huge = Record(Kind.EVENT, "x", 1, 1, BOOT, True, {"s": "y" * 4000, "t": ["z" * 4000] * 20})
    spool.put([bad, unpackable, huge, rec(1)])
    assert spool.drops == {"invalid": 2, "oversize": 1}
    assert spool.n_records == 1


def test_batches_never_mix_boots_or_sync_states(spool: Spool) -> None:
    a = [Record(Kind.METRIC, "m", i, i, "aa" * 16, True, 1.0) for i in range(5)]
    b = [Record(Kind.METRIC, "m", i, i, "bb" * 16, True, 1.0) for i in range(5)]
    c = [Record(Kind.METRIC, "m", i, i, "bb" * 16, False, 1.0) for i in range(5)]
    spool.put(a + b + c)
    batches = drain(spool)
    assert [(x.id.boot, x.synced, len(x.records)) for x in batches] == \
        [("aa" * 16, True, 5), ("bb" * 16, True, 5), ("bb" * 16, False, 5)]


def _commit_in_child(path: Path, n: int) -> None:
    """A writer that dies with SIGKILL after its commits (no close, no checkpoint)."""
    repo = str(Path(__file__).resolve().parents[2])
    code = (f"import os, sys; sys.path.insert(0, {repo!r})\n"
            "from agent.spool import Spool\nfrom agent.records import Kind, Record\n"
            f"sp = Spool({str(path)!r}, 1 << 24); sp.open()\n"
            f"for k in range({n}):\n"
            "    sp.put([Record(Kind.EVENT, 'e', k, k, 'ab'*16, True, {'k': k, 'p': 'x'*500})])\n"
            "os.kill(os.getpid(), 9)\n")
    r = subprocess.run(["python3", "-c", code], check=False)
    assert r.returncode == -9


def test_kill9_loses_no_committed_record(tmp_path: Path) -> None:
    _commit_in_child(tmp_path / "s.db", 50)
    sp = Spool(tmp_path / "s.db", 1 << 24)
    sp.open()
    got = [r.data["k"] for b in drain(sp) for r in b.records]  # type: ignore[index]
    assert got == list(range(50))


@pytest.mark.parametrize("cut", [0.0, 0.13, 0.5, 0.77, 0.999])
def test_power_cut_torn_wal_opens_with_a_prefix(tmp_path: Path, cut: float) -> None:
    """Model a power cut by truncating the WAL at an arbitrary byte: SQLite's frame checksums must
    leave us a clean prefix of the committed transactions, never an error."""
    _commit_in_child(tmp_path / "s.db", 40)
    wal = tmp_path / "s.db-wal"
    assert wal.exists() and wal.stat().st_size > 0
    size = wal.stat().st_size
    with wal.open("r+b") as f:
        f.truncate(int(size * cut))
    sp = Spool(tmp_path / "s.db", 1 << 24)
    sp.open()
    got = [r.data["k"] for b in drain(sp) for r in b.records]  # type: ignore[index]
    assert got == list(range(len(got))), "a prefix, in order, no holes"
    assert not sp.recovered_from_corruption


def test_corrupt_database_is_moved_aside_and_counted(tmp_path: Path) -> None:
    p = tmp_path / "s.db"
    p.write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    sp = Spool(p, 1 << 20)
    sp.open()
    assert sp.recovered_from_corruption
    assert list(tmp_path.glob("s.db.corrupt-*"))
    sp.put([rec(1)])
    assert sp.n_records == 1


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.fail("this test needs root and mount(8) to make a real full filesystem")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_keeps_records_in_memory_then_recovers(tiny_fs: Path) -> None:
    import agent.spool as spool_mod

    sp = Spool(tiny_fs / "s.db", 1 << 30, memory_max_records=500)
    sp.open()
    sp.put([rec(i, Kind.EVENT, size=200) for i in range(10)])
    filler = tiny_fs / "filler"
    with filler.open("wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    sp.put([rec(100 + i, Kind.EVENT, size=200) for i in range(200)])
    assert sp.degraded and sp.stats()["memory_records"] > 0
    sp.put([rec(400 + i, Kind.METRIC) for i in range(600)])   # beyond the memory bound: metrics go first
    assert sp.stats()["memory_records"] <= 500
    assert sp.drops.get("memory_full.metric", 0) > 0 and "memory_full.event" not in sp.drops
    filler.unlink()
    old = spool_mod.RETRY_DISK_S
    spool_mod.RETRY_DISK_S = 0.0
    try:
        sp.put([])
        sp.put([rec(2000, Kind.EVENT)])
    finally:
        spool_mod.RETRY_DISK_S = old
    assert not sp.degraded
    kept = [r for b in drain(sp) for r in b.records]
    events = [r.data["i"] for r in kept if r.kind is Kind.EVENT]  # type: ignore[index]
    assert events == list(range(10)) + list(range(100, 300)) + [2000], "every event survived the full disk"


def test_read_only_database_degrades_without_crash(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.db", 1 << 20)
    sp.open()
    sp.put([rec(1)])
    sp._conn.execute("PRAGMA query_only=1")   # what a remount read-only looks like from SQLite's side
    sp.put([rec(2), rec(3)])
    assert sp.degraded
    assert "readonly" in sp.last_disk_error.lower() or "read-only" in sp.last_disk_error.lower()
    sp._conn.execute("PRAGMA query_only=0")
    import agent.spool as spool_mod

    spool_mod.RETRY_DISK_S, old = 0.0, spool_mod.RETRY_DISK_S
    try:
        sp.put([rec(4)])
    finally:
        spool_mod.RETRY_DISK_S = old
    assert not sp.degraded
    assert [r.data for b in drain(sp) for r in b.records] == [1.0, 2.0, 3.0, 4.0]


def test_unseal_requeues_records_ahead_of_newer_ones(spool: Spool) -> None:
    spool.put([rec(i) for i in range(10)])
    b = spool.seal(bid, 64 * 1024)
    assert b is not None
    spool.put([rec(100)])
    spool.unseal(b.seq)
    assert [r.data for x in drain(spool) for r in x.records] == [float(i) for i in range(10)] + [100.0]


def test_sqlite_settings(spool: Spool) -> None:
    db = sqlite3.connect(spool.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert spool._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_open_reports_how_the_previous_run_ended(tmp_path: Path) -> None:
    sp = Spool(tmp_path / "s.db", 1 << 20)
    assert sp.open() == "first"
    sp.close()
    assert sp.open() == "clean"
    # no close(): as after a power cut
    sp2 = Spool(tmp_path / "s.db", 1 << 20)
    assert sp2.open() == "unclean"
    sp2.close()


def test_tracked_sizes_match_the_database(spool: Spool) -> None:
    spool.put([rec(i, Kind.EVENT, size=i) for i in range(50)])
    first = spool.seal(bid, 2048)
    spool.seal(bid, 2048)
    assert first is not None and spool.ack([first.seq]) == 1   # deleted lazily, by the next write
    spool.put([rec(100 + i) for i in range(10)])
    tracked = (spool.n_records, spool.n_batches, spool.bytes, spool.record_body_bytes)
    spool._recount()
    assert tracked == (spool.n_records, spool.n_batches, spool.bytes, spool.record_body_bytes)
    n, b = spool.unsealed_summary()
    assert (n, b) == (spool.n_records, spool.record_body_bytes)
