"""Helpers for the storage tests (a module with a unique name: every test directory has a conftest)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from agent import spool_disk

Mount = Callable[..., Path]


def remount(mnt: Path, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", str(mnt)], check=True)


def fill(fs: Path, leave: int = 0) -> Path:
    """Fill the file system to `leave` free bytes with a file of its own (delete it to give the space back)."""
    f = fs / "filler"
    with f.open("ab") as fh:
        try:
            while (free := spool_disk.free_bytes(fs) or 0) > leave:
                fh.write(b"\0" * min(65536, max(4096, free - leave)))
                fh.flush()
        except OSError:
            pass
    return f
