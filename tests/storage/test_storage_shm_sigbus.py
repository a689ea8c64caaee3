"""A start on a full ext4 with 1 KiB blocks (mkfs.ext4's default below 512 MiB) after kill -9. SQLite grows the
WAL index (-shm) by writing the last byte of each 4 KiB page; the rest of each page stays a hole, and its first
store through the mapping on a full disk was a SIGBUS: the agent died at every start (a restart loop, no
telemetry, found by the issue 11 re-run). The spool must open (the killed run's reserve gives the room) or run
in memory, never crash; and once open, no later store into the index may need a block."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from agentproc import REPO
from storage_util import Mount, fill

from agent import spool_disk

RUN = """
import json, os, signal, sys
from pathlib import Path
from agent.clock import SystemClock
from agent.records import RecordFactory
from agent.spool import Spool
sp = Spool(Path(sys.argv[1]), 1 << 20, ledger_path=Path(sys.argv[2]))
prev = sp.open()
rec = RecordFactory(SystemClock())
if sys.argv[3] == "put":
    sp.put([rec.event("test.ev", {"i": i}) for i in range(200)])
print(json.dumps({"previous": prev, "trouble": sp.trouble and sp.trouble.state, "records": sp.n_records}),
      flush=True)
if sys.argv[3] == "put":
    os.kill(os.getpid(), signal.SIGKILL)      # kill -9: the WAL, the -shm and the reserve stay
sp.close()
"""


def run(spool: Path, tmp: Path, what: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", RUN, str(spool), str(tmp / "ledger.json"), what],
                          capture_output=True, text=True, timeout=60, cwd=str(REPO),
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_a_start_on_a_full_1k_block_ext4_after_kill_9_does_not_die_of_sigbus(mount: Mount, tmp_path: Path) -> None:
    fs = mount("3M", ext4_block=1024)
    spool = fs / "icvq" / "spool.db"
    first = run(spool, tmp_path, "put")
    assert first.returncode == -9, first.stderr
    assert json.loads(first.stdout)["records"] == 200
    assert spool_disk.reserve_path(spool).exists()
    fill(fs)
    again = run(spool, tmp_path, "open")
    assert again.returncode == 0, f"exit {again.returncode}: {again.stderr[-2000:]}"
    st = json.loads(again.stdout)
    assert st == {"previous": "unclean", "trouble": None, "records": 200}, st
    shm = Path(str(spool) + "-shm")
    assert not shm.exists() or shm.stat().st_blocks * 512 >= shm.stat().st_size, "no holes left in the index"


def test_no_room_even_for_the_index_runs_in_memory_instead_of_crashing(mount: Mount, tmp_path: Path) -> None:
    fs = mount("3M", ext4_block=1024)
    spool = fs / "icvq" / "spool.db"
    first = run(spool, tmp_path, "put")
    assert first.returncode == -9, first.stderr
    spool_disk.release_reserve(spool)          # nothing to give back this time
    fill(fs)
    again = run(spool, tmp_path, "open")
    assert again.returncode == 0, f"exit {again.returncode}: {again.stderr[-2000:]}"
    assert json.loads(again.stdout) == {"previous": "unknown", "trouble": "disk_full", "records": 0}


def test_no_room_to_fill_the_index_after_opening_runs_in_memory(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The room shm_room saw can be gone by the time the holes are filled (the open's own writes, another
    process): a spool that could not fill them must not run on with them (a later store would be a SIGBUS), but
    close and run as disk full until a retry can; the history the same."""
    from agent import history
    from agent.clock import SystemClock
    from agent.config import HistoryConfig
    from agent.history import History
    from agent.records import RecordFactory
    from agent.spool import Spool

    rec = RecordFactory(SystemClock())
    sp = Spool(tmp_path / "spool.db", 1 << 20)
    sp.open()
    sp.put([rec.event("test.ev", {"i": i}) for i in range(5)])
    sp.close()

    def no_room(fd: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")
    with monkeypatch.context() as m:
        m.setattr(os, "posix_fallocate", no_room)
        sp = Spool(tmp_path / "spool.db", 1 << 20)
        sp.open()
        assert sp.trouble is not None and sp.trouble.state == "disk_full", sp.trouble
        sp.put([rec.event("test.ev", {"i": 99})])                  # taken, in memory
        assert sp.memory_records == 1
        h = History(HistoryConfig(path=str(tmp_path / "history.db")))
        h([rec.event("test.ev", {"i": 1})])
        assert (h.written, h.errors) == (0, 1)                    # a counted history error, no connection kept
    monkeypatch.setattr(history, "RETRY_S", 0.0)                   # the history's back-off after a failure
    h([rec.event("test.ev", {"i": 2})])                            # room again: the next write opens and fills
    assert (h.written, h.errors) == (1, 1)
    sp.close()
