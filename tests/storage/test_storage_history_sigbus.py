"""The local history shares /var/lib/icvq with the spool and reopens its database for writes. On a full ext4
with 1 KiB blocks (mkfs.ext4's default below 512 MiB) and an -shm left by a crash, SQLite grows the WAL index
by one byte per 4 KiB page; the rest of each page stays a hole, and the first store into it was a SIGBUS
that killed the agent (seen at start in the issue 11 re-run: History.open, 1 of 4 restarts after kill -9;
the spool's side: test_storage_shm_sigbus). A write there must fail as an error and work once space is back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from agentproc import REPO
from storage_util import Mount, fill

RUN = """
import json, sys
from agent.clock import SystemClock
from agent.config import HistoryConfig
from agent.history import History
from agent.records import RecordFactory
h = History(HistoryConfig(path=sys.argv[1]))
h([RecordFactory(SystemClock()).event("test.ev", {"i": 1})])
print(json.dumps({"written": h.written, "errors": h.errors}), flush=True)
"""


def run(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", RUN, str(path)], capture_output=True, text=True, timeout=60,
                          cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.parametrize("free_kib", [9, 10])   # room for SQLite's one byte per page, not for the holes
def test_a_history_write_on_a_nearly_full_1k_block_ext4_fails_instead_of_sigbus(
        mount: Mount, free_kib: int) -> None:
    fs = mount("3M", ext4_block=1024)
    path = fs / "icvq" / "history.db"
    first = run(path)
    assert first.returncode == 0 and json.loads(first.stdout) == {"written": 1, "errors": 0}, first.stderr
    Path(f"{path}-shm").write_bytes(b"")          # what a crash leaves: an index SQLite must grow again
    filler = fill(fs, leave=free_kib * 1024)
    full = run(path)
    assert full.returncode == 0, f"exit {full.returncode}: {full.stderr[-2000:]}"
    assert json.loads(full.stdout) == {"written": 0, "errors": 1}
    filler.unlink()
    again = run(path)
    assert again.returncode == 0 and json.loads(again.stdout) == {"written": 1, "errors": 0}, again.stderr
