"""The spool on real small file systems: disk use within the cap, headroom, degraded mode sealing in memory,
identities that never collide, the shutdown reserve, corruption counted by records."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import agent.spool as spool_mod
from agent import spool_disk, wire
from agent.records import Kind, Record
from agent.spool import Spool

BOOT = "cd" * 16


def rec(i: int, kind: Kind = Kind.METRIC, pad: int = 50) -> Record:
    return Record(kind, "test.x", 1_700_000_000_000 + i, 10_000 + i, BOOT, True, {"i": i, "pad": "x" * pad})


def make_id(sp: Spool) -> object:
    return lambda boot, seq: wire.BatchId("V", "d", sp.sid, boot, seq)


def decode(payload: bytes) -> wire.Batch:
    b = wire.decode(payload)
    assert isinstance(b, wire.Batch)
    return b


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[object]:
    """mount(size) -> a fresh tmpfs of that size under tmp_path; all unmounted at teardown."""
    if os.geteuid() != 0:
        pytest.fail("these tests need root to mount small tmpfs file systems")
    mounted: list[Path] = []

    def make(size: str) -> Path:
        mnt = tmp_path / f"fs{len(mounted)}"
        mnt.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True)
        mounted.append(mnt)
        return mnt

    yield make
    for mnt in mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def put_retrying_at_once(sp: Spool, records: list[Record]) -> None:
    """put() with the disk tried again now, not RETRY_DISK_S after the last try."""
    spool_mod.RETRY_DISK_S, old = 0.0, spool_mod.RETRY_DISK_S
    try:
        sp.put(records)
    finally:
        spool_mod.RETRY_DISK_S = old


def fill(fs: Path, leave: int = 0) -> Path:
    """Fill the file system up to `leave` free bytes with a file of its own."""
    f = fs / "filler"
    with f.open("wb") as fh:
        try:
            while (spool_disk.free_bytes(fs) or 0) > leave:
                fh.write(b"\0" * min(65536, max(4096, (spool_disk.free_bytes(fs) or 0) - leave)))
                fh.flush()
        except OSError:
            pass
    return f


def test_disk_use_stays_under_the_cap_and_every_record_is_counted(mount) -> None:
    fs = mount("3m")
    sp = Spool(fs / "s.db", 1 << 20)
    sp.open()
    put = sealed = 0
    worst = 0
    for i in range(1500):
        sp.put([rec(i * 10 + k) for k in range(10)])
        put += 10
        if i % 40 == 0:
            b = sp.seal(make_id(sp), 8192)
            if b is not None and i % 80 == 0:
                sealed += b.n_records
                sp.ack([b.seq])
        worst = max(worst, sp.disk_bytes())
    assert worst <= 1 << 20, f"the spool's files reached {worst} bytes"
    assert sp.trouble is None
    dropped = sum(sp.drops.values())
    assert dropped > 0 and set(sp.drops) <= {"spool_full.metric", "spool_full.batch_records"}
    left = sp.n_records + sum(b.n_records for b in sp.sealed())
    assert sealed + dropped + left == put
    sp.close()


def test_headroom_shrinks_the_cap_instead_of_filling_the_file_system(mount) -> None:
    fs = mount("4m")
    filler = fill(fs, leave=3 << 20)
    sp = Spool(fs / "s.db", 64 << 20, min_free_bytes=2 << 20)
    sp.open()
    for i in range(800):
        sp.put([rec(i * 10 + k, pad=80) for k in range(10)])
        assert (spool_disk.free_bytes(fs) or 0) >= (2 << 20) - 4096, "pushed the file system below headroom"
    assert sp.drops.get("headroom.metric", 0) > 0 and not any(k.startswith("spool_full") for k in sp.drops)
    assert sp.trouble is not None and sp.trouble.state == "low_headroom" and not sp.degraded
    filler.unlink()
    sp.put([rec(99999)])
    assert sp.trouble is None
    sp.close()


@pytest.mark.parametrize("cause", ["spool_full", "headroom"])
def test_each_cause_of_eviction_counts_every_class_under_its_own_name(mount, cause: str) -> None:
    """One write larger than the whole cap takes everything older, in order (samples, snapshots, events, sealed
    batches), and itself: the max_mib cap counts all of it as spool_full.*, a squeezed headroom as headroom.*."""
    fs = mount("8m")
    if cause == "headroom":
        fill(fs, leave=3 << 20)
        sp = Spool(fs / "s.db", 64 << 20, min_free_bytes=2 << 20, max_record_bytes=4 << 20)
    else:
        sp = Spool(fs / "s.db", 1 << 20, max_record_bytes=4 << 20)
    sp.open()
    sp.put([rec(i, Kind.EVENT) for i in range(10)])
    batch = sp.seal(make_id(sp), 1 << 16)             # sealed, never acknowledged
    assert batch is not None and batch.n_records == 10
    sp.put([rec(100 + i) for i in range(10)] + [rec(200 + i, Kind.SNAPSHOT) for i in range(10)]
           + [rec(300 + i, Kind.EVENT) for i in range(10)])
    assert sp.drops == {}
    huge = Record(Kind.EVENT, "test.x", 1_700_000_001_000, 11_000, BOOT, True, {"pad": ["x" * 4000] * 500})
    sp.put([huge])                                    # ~2 MB: more than either cap
    assert sp.drops == {f"{cause}.metric": 10, f"{cause}.snapshot": 10, f"{cause}.event": 10,
                        f"{cause}.batch_records": 10, f"{cause}.incoming": 1}
    assert sp.n_records == 0 and sp.sealed() == [] and not sp.degraded
    sp.close()


def test_full_disk_seals_in_memory_under_a_memory_sid_then_writes_back(mount) -> None:
    fs = mount("2m")
    sp = Spool(fs / "s.db", 64 << 20, memory_max_records=5000)
    sp.open()
    sp.put([rec(i, Kind.EVENT) for i in range(20)])
    first = sp.seal(make_id(sp), 4096)
    assert first is not None and first.seq == 1
    filler = fill(fs)
    for i in range(100, 3000, 50):
        sp.put([rec(i + k, Kind.EVENT, pad=200) for k in range(50)])
        if sp.degraded:
            break
    assert sp.degraded and sp.trouble is not None and sp.trouble.state == "disk_full"
    mem = sp.seal(make_id(sp), 4096)
    assert mem is not None and mem.seq < 0, "sealed in memory, addressed by a negative handle"
    mb = decode(mem.payload)
    assert mb.id.sid and mb.id.sid != sp.sid and mb.id.seq == 1
    assert [b.seq for b in sp.sealed()][:1] == [mem.seq], "memory batches go first"
    assert sp.ack([mem.seq]) == 1
    sp.put([rec(4000 + k, Kind.EVENT) for k in range(10)])
    unacked = sp.seal(make_id(sp), 4096)
    assert unacked is not None and unacked.seq < 0
    filler.unlink()
    put_retrying_at_once(sp, [rec(5000, Kind.EVENT)])
    assert not sp.degraded and sp.trouble is None and sp.memory_records == unacked.n_records
    nxt = sp.seal(make_id(sp), 4096)
    assert nxt is not None and nxt.seq == 2, "the spool's own sequence carries on"
    sp.close()
    # The unacknowledged memory batch went to disk with its bytes and identity; the next run sends it.
    sp2 = Spool(fs / "s.db", 64 << 20)
    assert sp2.open() == "clean"
    again = [b for b in sp2.sealed() if b.seq < 0]
    assert [b.payload for b in again] == [unacked.payload]
    sp2.close()


def test_unopenable_at_start_runs_in_memory_and_adopts_the_disk_later(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.mkdir()                                  # a directory in the way
    sp = Spool(path, 1 << 20)
    assert sp.open() == "unknown"
    assert sp.degraded and sp.trouble is not None and sp.trouble.state == "unopenable"
    sp.put([rec(i) for i in range(30)])
    b = sp.seal(make_id(sp), 1 << 16)
    assert b is not None
    memory_sid = decode(b.payload).id.sid
    assert 0 < memory_sid < 2**63
    sp.put([rec(100 + i) for i in range(5)])
    path.rmdir()
    put_retrying_at_once(sp, [rec(200)])
    assert not sp.degraded and sp.n_records == 6 and sp.sid and sp.sid != memory_sid
    sp.close()


def test_a_memory_batch_unsealed_after_recovery_is_written_ahead_of_newer_records(tmp_path: Path) -> None:
    """The broker refused a memory batch's size (0x95) once the disk works again: its records wait in memory
    until the next put writes them, ahead of that put's own, with the spool's totals still matching its rows."""
    path = tmp_path / "s.db"
    path.mkdir()
    sp = Spool(path, 1 << 20)
    assert sp.open() == "unknown"
    sp.put([rec(i) for i in range(30)])
    b = sp.seal(make_id(sp), 1 << 16)
    assert b is not None and b.seq < 0 and b.n_records == 30
    path.rmdir()
    put_retrying_at_once(sp, [rec(100)])
    assert not sp.degraded and sp.n_records == 1
    sp.unseal(b.seq)
    assert sp.memory_records == 30 and sp.memory_batches == 0
    sp.put([rec(200 + i) for i in range(3)])
    assert sp.memory_records == 0 and sp.n_records == 34 and sp.drops == {}
    n, body_bytes, total = sp.n_records, sp.record_body_bytes, sp.bytes
    sp._recount()
    assert (sp.n_records, sp.record_body_bytes, sp.bytes) == (n, body_bytes, total), "the put's totals are the rows'"
    out = sp.seal(make_id(sp), 1 << 20)
    assert out is not None
    assert [r.data["i"] for r in decode(out.payload).records] == [100, *range(30), 200, 201, 202]
    sp.close()


def test_shutdown_on_a_full_disk_uses_the_reserve_and_counts_the_rest(mount) -> None:
    fs = mount("2m")
    sp = Spool(fs / "s.db", 64 << 20, memory_max_records=20000)
    assert sp.open() == "first"
    assert spool_disk.reserve_path(fs / "s.db").exists()
    sp.put([rec(i, Kind.EVENT) for i in range(10)])
    fill(fs)
    total = 10
    while not sp.degraded:
        sp.put([rec(total + k, Kind.EVENT, pad=300) for k in range(100)])
        total += 100
    for _ in range(20):
        sp.put([rec(total + k, Kind.EVENT, pad=300) for k in range(100)])
        total += 100
    sp.close()
    sp2 = Spool(fs / "s.db", 64 << 20)
    assert sp2.open() == "clean"
    written = sp2.n_records
    lost = sp2.drops.get("shutdown.unwritable", 0)
    assert written + lost + sum(v for k, v in sp2.drops.items() if k != "shutdown.unwritable") == total
    assert lost > 0, "a 2 MiB disk cannot take 2,000 padded events; the rest must be counted"
    sp2.close()


def test_corrupt_spool_counts_its_records(tmp_path: Path) -> None:
    p = tmp_path / "s.db"
    sp = Spool(p, 1 << 24)
    sp.open()
    sp.put([rec(i) for i in range(570)])
    sp.close()
    # Damage the freelist/page header of a late page: quick_check fails, the tables stay readable.
    with p.open("r+b") as f:
        f.seek(0, 2)
        size = f.tell()
        f.seek(size - 4096)
        f.write(b"\xff" * 16)
    sp2 = Spool(p, 1 << 24)
    sp2.open()
    assert sp2.recovered_from_corruption
    n = sp2.drops.get("spool_corrupt", 0) + sp2.drops.get("spool_corrupt.estimated", 0)
    assert n >= 100, sp2.drops
    sp2.close()
    # Garbage all through: estimated from the file size, marked as an estimate.
    q = tmp_path / "t.db"
    q.write_bytes(b"SQLite format 3\x00" + os.urandom(64 * 1024))
    sp3 = Spool(q, 1 << 20)
    sp3.open()
    assert sp3.drops.get("spool_corrupt.estimated", 0) == (16 + 64 * 1024) // spool_disk.EST_BYTES_PER_RECORD
    sp3.close()
