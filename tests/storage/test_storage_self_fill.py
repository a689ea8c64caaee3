"""A partition the spool fills by itself: `max_mib` 64 on 1.5 MiB with min_free_mib = 0, so the cap follows the
file system's free space. The database file must stop growing there: an insert that found no free page grew
it, the squeezed cap followed the file, and 2-5 pages a round the spool ate the partition until its WAL held
pages beyond the file's end that no checkpoint could write. Then it stayed degraded for good, the records
on disk never leaving though the broker was back (2,269 records, 1.5 MiB tmpfs, 40 records of ~500 bytes a
commit). At the squeezed cap the spool says 'low headroom' once, not on every other commit (an eviction takes
it to ~86 % of the cap; the reason came at 90 % and went below)."""

from __future__ import annotations

import logging

import pytest
from storage_util import Mount

from agent import spool_disk, wire
from agent.clock import SystemClock
from agent.records import RecordFactory
from agent.spool import Spool


def test_a_spool_filling_its_own_partition_evicts_and_never_fills_the_disk(
        mount: Mount, caplog: pytest.LogCaptureFixture) -> None:
    fs = mount("1536k")
    rf = RecordFactory(SystemClock())
    caplog.set_level(logging.WARNING, logger="icvq.spool")
    spool = Spool(fs / "spool.db", 64 * 2**20)
    spool.open()
    sent = 0
    try:
        for _ in range(150):
            spool.put([rf.metric("test.m", {"i": sent + k, "pad": "p" * 400}) for k in range(40)])
            sent += 40
            assert not spool.degraded, f"the spool filled its own partition: {spool.stats()}"
        assert spool.drops.get("headroom.metric", 0) > 0, "it evicted instead"
        assert spool_disk.reserve_path(fs / "spool.db").exists(), "the shutdown reserve was never needed"
        said = [r.getMessage() for r in caplog.records]
        assert sum("low headroom" in m for m in said) == 1 and not any("restored" in m for m in said), said

        delivered = 0
        while spool.n_records:
            b = spool.seal(lambda boot, seq: wire.BatchId("V", "d", spool.sid, boot, seq), 16 * 1024)
            assert b is not None and not spool.degraded, spool.stats()
            delivered += b.n_records
            spool.ack([b.seq])
            spool.put([])                   # the next write transaction deletes the acknowledged batches
        assert delivered + sum(spool.drops.values()) == sent
    finally:
        spool.close()
