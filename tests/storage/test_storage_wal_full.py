"""A disk that fills while the spool's WAL holds commits not yet checkpointed. A checkpoint used to follow only
a successful commit, and on that disk no commit could go through again (each needs more WAL), so the spool
stayed degraded for good and the records on disk never left, though the broker was up (CI caught it once on
a 1 MiB partition). The retry now checkpoints first and, when the checkpoint itself needs room in the
database file, gives back the shutdown reserve."""

from __future__ import annotations

import time
from pathlib import Path

from storage_util import Mount, fill

from agent import spool_disk, wire
from agent.clock import SystemClock
from agent.records import RecordFactory
from agent.spool import Spool


def _wal(fs: Path) -> int:
    return (fs / "spool.db-wal").stat().st_size


def test_a_disk_filled_under_an_uncheckpointed_wal_drains_without_freeing_anything(mount: Mount) -> None:
    fs = mount("2m")
    rf = RecordFactory(SystemClock())
    sent = 0

    def put(n: int) -> None:
        nonlocal sent
        spool.put([rf.metric("test.m", {"i": sent + k, "pad": "p" * 100}) for k in range(n)])
        sent += n

    spool = Spool(fs / "spool.db", 64 * 2**20)
    spool.open()
    while spool.bytes < 600 * 1024:
        put(100)
    spool.close()                           # checkpointed into the database file: the WAL starts empty
    spool = Spool(fs / "spool.db", 64 * 2**20)
    spool.open()
    # New rows grow the database at its end; their pages wait in the WAL, below the checkpoint threshold.
    while _wal(fs) < 100 * 1024:
        put(20)
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

    seqs = []
    deadline = time.monotonic() + 30
    while (spool.n_records or spool.memory_records) and time.monotonic() < deadline:
        b = spool.seal(lambda boot, seq: wire.BatchId("V", "d", spool.sid, boot, seq), 16 * 1024)
        if b is not None:
            seqs.append(b.seq)
            spool.ack([b.seq])
        put(0)                              # the next write transaction deletes the acknowledged batches
    assert not spool.n_records and not spool.memory_records, spool.stats()
    assert sum(spool.drops.values()) == 0 and on_disk > 0
    assert filler.exists()                  # nothing outside the spool was freed for it
    spool.close()
