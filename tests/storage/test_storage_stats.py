"""What `icvq status` reads of the spool (Spool.stats) while acknowledged batches wait for the next write
transaction to delete them: a drained spool read '0 records, 0 batches, 0 B; oldest 0s' instead of 'empty'."""

from __future__ import annotations

from pathlib import Path

from agent import wire
from agent.clock import SystemClock
from agent.records import RecordFactory
from agent.spool import Spool


def test_acknowledged_batches_are_not_the_oldest_thing_waiting(tmp_path: Path) -> None:
    rf = RecordFactory(SystemClock())
    spool = Spool(tmp_path / "spool.db", 2**20)
    spool.open()
    try:
        spool.put([rf.metric("test.m", {"i": i}) for i in range(30)])
        seqs = []
        while (b := spool.seal(lambda boot, seq: wire.BatchId("V", "d", spool.sid, boot, seq), 256)) is not None:
            seqs.append(b.seq)
        assert len(seqs) > 2
        spool.ack(seqs[1:2])                # out of order: the oldest still waits
        assert spool.stats()["oldest_wall_ms"] is not None
        spool.ack(seqs)
        st = spool.stats()
        assert (st["records"], st["batches"], st["oldest_wall_ms"]) == (0, 0, None)
    finally:
        spool.close()
