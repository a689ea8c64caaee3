"""The spool on a real ext4 file system that goes read-only after an error (errors=remount-ro, the usual
mount option on a car's flash), triggered through /sys/fs/ext4/<dev>/trigger_fs_error: SQLite then reports
only "disk I/O error", and recent kernels do not show that emergency read-only state in statvfs. The spool
must call it read-only, and a stop on it must be recognised as orderly by the next start."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import agent.spool as spool_mod
from agent.clock import SystemClock
from agent.records import RecordFactory
from agent.spool import Spool


class Ext4:
    def __init__(self, tmp: Path) -> None:
        self.img, self.mnt = tmp / "fs.img", tmp / "fs"
        self.mnt.mkdir()
        subprocess.run(["truncate", "-s", "8M", str(self.img)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self.img)], check=True)
        self.mount()

    def mount(self) -> None:
        subprocess.run(["mount", "-o", "loop,errors=remount-ro", str(self.img), str(self.mnt)], check=True)

    def error(self) -> None:
        dev = Path(subprocess.run(["findmnt", "-no", "SOURCE", str(self.mnt)], capture_output=True, text=True,
                                  check=True).stdout.strip()).name
        Path(f"/sys/fs/ext4/{dev}/trigger_fs_error").write_text("1")

    def repair(self) -> None:
        """What the car's boot does after such an error: unmount, fsck, mount again."""
        subprocess.run(["umount", str(self.mnt)], check=True)
        subprocess.run(["e2fsck", "-fy", str(self.img)], capture_output=True)   # exit 1: errors fixed
        self.mount()


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Ext4]:
    if not shutil.which("mkfs.ext4") or not Path("/sys/fs/ext4").is_dir():
        pytest.fail("needs mkfs.ext4 and the ext4 module (loop-mounted image)")
    fs = Ext4(tmp_path)
    try:
        yield fs
    finally:
        subprocess.run(["umount", "-l", str(fs.mnt)], check=False)


def test_an_ext4_error_reads_as_read_only_and_the_stop_as_clean(ext4: Ext4, tmp_path: Path) -> None:
    ledger = tmp_path / "run" / "drops-ledger.json"
    rec = RecordFactory(SystemClock())
    sp = Spool(ext4.mnt / "spool.db", 2**20, ledger_path=ledger)
    assert sp.open() == "first"
    sp.put([rec.metric("test.m", {"i": i}) for i in range(50)])
    ext4.error()
    sp.put([rec.metric("test.m", {"i": i}) for i in range(50, 80)])
    assert sp.trouble is not None and sp.trouble.state == "read_only", sp.trouble
    sp.close()
    lost = json.loads(ledger.read_text())["drops"]
    assert lost == {"stop_unpersisted.metric": 30}
    ext4.repair()
    sp = Spool(ext4.mnt / "spool.db", 2**20, ledger_path=ledger)
    assert sp.open() == "clean", "an orderly stop that could not write its mark is not a crash"
    assert sp.n_records == 50 and sp.drops == lost and not ledger.exists()
    sp.close()


def test_an_orderly_stop_with_nothing_lost_still_counts_as_clean(ext4: Ext4, tmp_path: Path) -> None:
    """The broker took everything; only the clean-stop mark could not be written."""
    ledger = tmp_path / "run" / "drops-ledger.json"
    sp = Spool(ext4.mnt / "spool.db", 2**20, ledger_path=ledger)
    sp.open()
    sp.put([RecordFactory(SystemClock()).metric("test.m", {"i": 0})])
    ext4.error()
    sp.close()
    assert json.loads(ledger.read_text())["drops"] == {}
    ext4.repair()
    sp = Spool(ext4.mnt / "spool.db", 2**20, ledger_path=ledger)
    assert sp.open() == "clean" and not sp.drops and not ledger.exists()
    sp.close()


class Died(Exception):
    pass


def test_a_run_that_saw_the_ledger_and_died_did_not_stop_cleanly(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = tmp_path / "run" / "drops-ledger.json"
    sp = Spool(tmp_path / "spool.db", 2**20, ledger_path=ledger)
    sp.open()
    sp._give_up_memory("test: the spool cannot be written")    # what close() does when its mark fails
    sp._conn.close()
    sp._db = None
    assert ledger.exists()

    def die(self: Spool) -> None:
        raise Died   # kill -9 after the open marked the spool in use, before the ledger was committed

    monkeypatch.setattr(spool_mod.Spool, "_after_open", die)
    sp = Spool(tmp_path / "spool.db", 2**20, ledger_path=ledger)
    with pytest.raises(Died):
        sp.open()
    sp._conn.close()
    monkeypatch.undo()
    sp = Spool(tmp_path / "spool.db", 2**20, ledger_path=ledger)
    assert sp.open() == "unclean"
    sp.close()
    db = sqlite3.connect(tmp_path / "spool.db")
    assert dict(db.execute("SELECT k, v FROM meta").fetchall())["clean"] == "1"
    db.close()
