"""kill -9 on a full disk, then a start on the still-full disk: the reserve the killed run left behind is
given back so the spool opens (previous_shutdown `unclean`, its records and sid kept) instead of running
unopened (`unknown`) until space returns; what memory holds at the next stop is counted (the drop ledger), and
once space is back everything is on disk or counted."""

from __future__ import annotations

from pathlib import Path

from storage_util import Mount, fill

from agent import spool_disk
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
