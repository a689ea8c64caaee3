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


def test_records_held_in_memory_are_still_waiting_for_a_flush(tmp_path: Path) -> None:
    """Spool disk full / read-only / unopenable and the broker away: `icvq flush --wait` printed "flushed:
    everything spooled before the request was acknowledged" (exit 0) while hundreds of records sat in memory,
    because the disk part of the spool was empty and its oldest timestamp None."""
    from agent.fieldcli.flush import drained

    (tmp_path / "spool.db").mkdir()          # a directory in the way: the spool holds records in memory
    rf = RecordFactory(SystemClock())
    spool = Spool(tmp_path / "spool.db", 2**20)
    spool.open()
    try:
        spool.put([rf.metric("test.m", {"i": i}) for i in range(5)])
        st = spool.stats()
        assert (st["records"], st["batches"], st["memory_records"]) == (0, 0, 5)
        oldest = st["oldest_wall_ms"]
        assert oldest is not None
        after = oldest / 1000 + 3600         # a flush asked for after these records were written
        assert not drained({"spool": st, "inflight": 0}, after)
        # Records that arrived after the request do not hold it up.
        assert drained({"spool": st, "inflight": 0}, oldest / 1000 - 1)

        assert spool.seal(lambda boot, seq: wire.BatchId("V", "d", spool.sid, boot, seq), 1 << 16) is not None
        st = spool.stats()
        assert (st["records"], st["batches"], st["memory_batches"]) == (0, 0, 1)
        assert st["oldest_wall_ms"] is not None
        assert not drained({"spool": st, "inflight": 0}, after)
    finally:
        spool.close()
