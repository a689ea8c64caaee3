"""kill -9 on a full disk, then a start on the still-full disk: the reserve the killed run left behind is
given back so the spool opens (previous_shutdown `unclean`, its records and sid kept) instead of running
unopened (`unknown`) until space returns; what memory holds at the next stop is counted (the drop ledger), and
once space is back everything is on disk or counted."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from storage_util import Mount, fill

from agent import spool_disk, wire
from agent.clock import SystemClock
from agent.records import RecordFactory
from agent.spool import Spool


def test_a_restart_on_a_full_disk_after_kill_9_opens_the_spool(mount: Mount, tmp_path: Path) -> None:
    fs = mount("2m")
    ledger = tmp_path / "run" / "drops-ledger.json"    # the daemon always has one (next to its socket)
    rec = RecordFactory(SystemClock())
    sp = Spool(fs / "spool.db", 1 << 20)
    assert sp.open() == "first"
    sid = sp.sid
    sp.put([rec.event("test.ev", {"i": i}) for i in range(100)])
    assert spool_disk.reserve_path(fs / "spool.db").exists()
    filler = fill(fs)
    sp._conn.close()                      # kill -9: no clean mark, the reserve stays
    sp._db = None

    sp = Spool(fs / "spool.db", 1 << 20, ledger_path=ledger)
    assert sp.open() == "unclean", sp.trouble
    assert sp.sid == sid and sp.n_records == 100
    n = 100
    while sp.trouble is None and n < 20000:   # the reserve's room first, then memory
        sp.put([rec.event("test.ev", {"i": i, "pad": "p" * 200}) for i in range(n, n + 50)])
        n += 50
    assert sp.trouble is not None and sp.trouble.state == "disk_full"
    sp.put([rec.event("test.ev", {"i": i}) for i in range(n, n + 30)])
    n += 30
    sp.close()

    filler.unlink()
    sp = Spool(fs / "spool.db", 1 << 20, ledger_path=ledger)
    assert sp.open() == "clean"
    assert sp.n_records + sum(sp.drops.values()) == n, sp.drops
    sp.close()


def test_no_reserve_to_give_back_still_runs_in_memory(mount: Mount, tmp_path: Path) -> None:
    fs = mount("1m")
    fill(fs)
    sp = Spool(fs / "spool.db", 1 << 20)
    assert sp.open() == "unknown"
    assert sp.trouble is not None and sp.trouble.state == "disk_full"
    sp.close()


def test_a_wal_no_checkpoint_can_take_keeps_records_in_memory_until_space_appears(
        mount: Mount, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """kill -9 with 400 KiB of new pages in the WAL, the disk then full: more than the free space and the reserve
    together, so no checkpoint goes through until space appears. A write now and then fitted into what a
    failed one left of the WAL: the spool flipped to 'writable again' and back to 'disk full' every 5 s (two
    log lines, a new `since` each time) and moved records from memory, where they are sent, onto a disk where
    they waited. Now it stays in memory with one reason that says why; with space back everything drains."""
    fs = mount("4m")
    rec = RecordFactory(SystemClock())
    sent = 0

    def put(sp: Spool, n: int) -> None:
        nonlocal sent
        sp.put([rec.metric("test.m", {"i": sent + k, "pad": "p" * 100}) for k in range(n)])
        sent += n

    pid = os.fork()
    if pid == 0:        # the killed run, in a process of its own: no close, no checkpoint, its reserve left
        code = 1
        try:
            sp = Spool(fs / "spool.db", 64 * 2**20)
            sp.open()
            put(sp, 2000)
            sp.close()
            sp = Spool(fs / "spool.db", 64 * 2**20)
            sp.open()
            while Path(str(fs / "spool.db") + "-wal").stat().st_size < 400 * 1024:
                put(sp, 100)
            (fs / "sent").write_text(str(sent))
            fill(fs)
            code = 0
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    sent = int((fs / "sent").read_text())
    filler = fs / "filler"

    sp = Spool(fs / "spool.db", 64 * 2**20, ledger_path=tmp_path / "run" / "drops-ledger.json")
    assert sp.open() == "unclean"
    on_disk = sp.n_records
    while not sp.degraded:
        put(sp, 20)
    since = sp.trouble.since if sp.trouble else 0.0
    caplog.set_level(logging.WARNING, logger="icvq.spool")
    caplog.clear()
    delivered = 0
    for _ in range(6):
        sp._last_disk_try -= 60             # a 5 s retry is due
        put(sp, 2)                          # a car's second of samples: fits what the failed write left
        b = sp.seal(lambda boot, seq: wire.BatchId("V", "d", sp.sid, boot, seq), 16 * 1024)   # the broker is up
        if b is not None:
            delivered += b.n_records
            sp.ack([b.seq])
        assert sp.degraded and sp.trouble is not None, sp.stats()
        assert (sp.trouble.state, sp.trouble.since) == ("disk_full", since)
    assert "wait for space" in sp.trouble.detail
    assert not [r for r in caplog.records if "writable again" in r.getMessage()], caplog.text
    assert sp.n_records >= on_disk and delivered >= 20, "memory is sealed and sent meanwhile"

    filler.unlink()
    sp._last_disk_try -= 60
    put(sp, 1)
    assert not sp.degraded, sp.stats()
    sp.close()
    sp = Spool(fs / "spool.db", 64 * 2**20, ledger_path=tmp_path / "run" / "drops-ledger.json")
    assert sp.open() == "clean"
    assert delivered + sp.n_records + sum(sp.drops.values()) == sent, sp.drops
    sp.close()
