"""A disk that fills while the spool's WAL holds commits not yet checkpointed. A checkpoint used to follow only
a successful commit, and on that disk no commit could go through again (each needs more WAL), so the spool
stayed degraded for good and the records on disk never left, though the broker was up (CI caught it once on
a 1 MiB partition). The retry now checkpoints first and, when the checkpoint itself needs room in the
database file, gives back the shutdown reserve."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from storage_util import Mount, fill

from agent import spool_disk, wire
from agent.clock import SystemClock
from agent.records import RecordFactory
from agent.spool import Spool


def _wal(fs: Path) -> int:
    return (fs / "spool.db-wal").stat().st_size


class Feed:
    def __init__(self, pad: int = 60) -> None:
        self.rf = RecordFactory(SystemClock())
        self.pad = pad
        self.sent = 0
        self.delivered = 0

    def __call__(self, spool: Spool, n: int) -> None:
        spool.put([self.rf.metric("test.m", {"i": self.sent + k, "pad": "p" * self.pad}) for k in range(n)])
        self.sent += n


def _reopened_with_wal(fs: Path, put: Feed, prefill: int, wal_bytes: int, step: int) -> Spool:
    """A spool holding `prefill` records, reopened (closing checkpointed them into the database file, so
    the WAL starts empty), then given new rows until its WAL holds `wal_bytes` of pages not yet checkpointed:
    new rows grow the database at its end, below the checkpoint threshold."""
    spool = Spool(fs / "spool.db", 64 * 2**20)
    spool.open()
    while put.sent < prefill:
        put(spool, 100)
    spool.close()
    spool = Spool(fs / "spool.db", 64 * 2**20)
    spool.open()
    while _wal(fs) < wal_bytes:
        put(spool, step)
    return spool


def test_a_disk_filled_under_an_uncheckpointed_wal_drains_without_freeing_anything(mount: Mount) -> None:
    fs = mount("2m")
    feed = Feed(pad=100)
    spool = _reopened_with_wal(fs, feed, 3500, 100 * 1024, 20)

    def put(n: int) -> None:
        feed(spool, n)

    assert spool.trouble is None
    filler = fill(fs)                       # another service takes the rest of the disk
    while not spool.degraded:
        put(20)
    assert spool.trouble is not None and spool.trouble.state == "disk_full"
    on_disk = spool.n_records

    spool._last_disk_try -= 60              # the 5 s retry is due
    put(1)
    assert not spool.degraded, f"the retry could not write: {spool.stats()}"
    assert not spool_disk.reserve_path(fs / "spool.db").exists(), "the reserve was given back to checkpoint"

    delivered = 0
    deadline = time.monotonic() + 30
    while (spool.n_records or spool.memory_records) and time.monotonic() < deadline:
        b = spool.seal(lambda boot, seq: wire.BatchId("V", "d", spool.sid, boot, seq), 16 * 1024)
        if b is not None:
            delivered += b.n_records
            spool.ack([b.seq])
        put(0)                              # the next write transaction deletes the acknowledged batches
    assert not spool.n_records and not spool.memory_records, spool.stats()
    # The file cannot grow on this disk: new records take the place of the oldest metrics, counted.
    assert delivered + sum(spool.drops.values()) == feed.sent and on_disk > 0
    assert set(spool.drops) <= {"headroom.metric"}
    assert filler.exists()                  # nothing outside the spool was freed for it
    spool.close()


def test_a_wal_larger_than_the_room_left_waits_for_space_as_one_disk_full_and_loses_nothing(
        mount: Mount, caplog: pytest.LogCaptureFixture) -> None:
    """The extreme case: the WAL holds more new pages than the free space and the reserve together, so no
    checkpoint can go through until space appears. The spool stays `disk_full` (the low-headroom reason took
    its place on every 5 s retry and gave it back when the write failed: two error lines a retry and a
    'since' never older than 5 s), keeps its records, and drains once the other service frees its space."""
    fs = mount("4m")
    feed = Feed(pad=100)
    spool = _reopened_with_wal(fs, feed, 2000, 400 * 1024, 100)

    def put(n: int) -> None:
        feed(spool, n)

    assert spool_disk.release_reserve(fs / "spool.db")
    spool._has_reserve = False              # taken by another service together with the rest of the disk
    filler = fill(fs)
    while not spool.degraded:
        put(20)
    assert spool.trouble is not None and spool.trouble.state == "disk_full"
    since = spool.trouble.since
    with caplog.at_level(logging.WARNING, logger="icvq.spool"):
        caplog.clear()
        for _ in range(3):
            spool._last_disk_try -= 60      # a 5 s retry is due; the checkpoint still has no room
            put(1)
            assert spool.degraded and spool.trouble is not None
            assert (spool.trouble.state, spool.trouble.since) == ("disk_full", since)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text

    filler.unlink()                         # space appears
    spool._last_disk_try -= 60
    put(1)
    assert not spool.degraded, spool.stats()
    delivered = 0
    while spool.n_records:
        b = spool.seal(lambda boot, seq: wire.BatchId("V", "d", spool.sid, boot, seq), 16 * 1024)
        assert b is not None, spool.stats()
        delivered += b.n_records
        spool.ack([b.seq])
        spool.put([])
    assert delivered + sum(spool.drops.values()) == feed.sent
    spool.close()


def _full_disk_with_a_small_wal(fs: Path, put: Feed) -> tuple[Spool, Path]:
    """A spool whose file has free pages (acknowledged batches deleted), reopened, then the disk filled: its
    checkpoint needs no room, but a write needs a little more WAL than the file system has."""
    spool = Spool(fs / "spool.db", 64 * 2**20)
    spool.open()
    for _ in range(50):
        put(spool, 40)
    for _ in range(8):
        b = spool.seal(lambda boot, seq: wire.BatchId("V", "d", spool.sid, boot, seq), 16 * 1024)
        assert b is not None
        spool.ack([b.seq])
        put.delivered += b.n_records
    put(spool, 0)
    spool, filler = _reopen_and_fill(spool, fs, put)
    assert spool.trouble is not None and spool.trouble.state == "disk_full"
    assert spool_disk.reserve_path(fs / "spool.db").exists()
    return spool, filler


def _reopen_and_fill(spool: Spool, fs: Path, put: Feed) -> tuple[Spool, Path]:
    """Close and reopen (the WAL starts empty), write a little, then another service fills the disk and
    the spool writes on until it is degraded."""
    spool.close()
    spool = Spool(fs / "spool.db", 64 * 2**20)
    spool.open()
    put(spool, 5)
    filler = fill(fs)
    while not spool.degraded:
        put(spool, 20)
    return spool, filler


def test_a_retry_whose_write_finds_no_room_gives_back_the_reserve(mount: Mount) -> None:
    """The checkpoint went through, the write did not: the retry failed every 5 s for good (seen after a kill -9
    and a start on the still-full disk: 514 records on disk, the broker up) while the 128 KiB reserve sat
    unused beside them."""
    fs = mount("2m")
    feed = Feed()
    spool, filler = _full_disk_with_a_small_wal(fs, feed)
    spool._last_disk_try -= 60              # the 5 s retry is due
    feed(spool, 1)
    assert not spool.degraded, spool.stats()
    assert spool.memory_records == 0 and not spool_disk.reserve_path(fs / "spool.db").exists()
    spool.close()
    filler.unlink()
    spool = Spool(fs / "spool.db", 64 * 2**20)
    assert spool.open() == "clean"
    assert feed.delivered + spool.n_records + sum(spool.drops.values()) == feed.sent
    spool.close()


def test_a_stop_on_a_full_disk_writes_memory_with_the_reserve_once_the_mark_is_in(mount: Mount) -> None:
    """Stopping while degraded: the clean mark and the tally went in without the reserve, then the records in
    memory found no room and were counted `shutdown.unwritable`, the reserve unused beside them."""
    fs = mount("2m")
    feed = Feed()
    spool, filler = _full_disk_with_a_small_wal(fs, feed)
    feed(spool, 1000)                       # into memory; no retry is due
    spool._make_room()                      # what the last retry did first: the WAL checkpointed, truncated
    spool.close()
    filler.unlink()
    spool = Spool(fs / "spool.db", 64 * 2**20)
    assert spool.open() == "clean"
    assert "shutdown.unwritable" not in spool.drops, spool.drops
    assert feed.delivered + spool.n_records + sum(spool.drops.values()) == feed.sent
    spool.close()


def test_a_write_that_evicts_and_then_fails_keeps_the_spool_size_right(mount: Mount) -> None:
    """On a full disk a write evicts (the file cannot grow) and then fails for want of WAL: the rollback put the
    rows back but their estimate stayed off the tracked size, and `icvq status` showed the spool at -10.7 KiB."""
    fs = mount("2m")
    feed = Feed()
    spool = Spool(fs / "spool.db", 64 * 2**20)
    spool.open()
    for _ in range(50):
        feed(spool, 40)
    # No free page in the file: a write at the squeezed cap evicts first.
    spool, filler = _reopen_and_fill(spool, fs, feed)
    tracked = (spool.n_records, spool.n_batches, spool.bytes)
    spool._recount()
    assert tracked == (spool.n_records, spool.n_batches, spool.bytes)
    spool.close()
    filler.unlink()
    spool = Spool(fs / "spool.db", 64 * 2**20)
    assert spool.open() == "clean"
    assert spool.n_records + sum(spool.drops.values()) == feed.sent
    spool.close()
