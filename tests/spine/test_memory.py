"""agent/memory.py: the glibc calls resolve and run (the RSS they save is measured by tools/bench/lean.py)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_one_arena_and_trim_run_in_a_fresh_process_before_threads() -> None:
    code = ("import threading; from agent import memory; ok = memory.one_arena(); memory.trim(); "
            "t = threading.Thread(target=lambda: bytearray(1 << 20)); t.start(); t.join(); memory.trim(); "
            "print(ok)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={"PYTHONPATH": str(REPO)}, check=True).stdout.strip()
    assert out == str(platform.libc_ver()[0] == "glibc")
