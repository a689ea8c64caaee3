"""Small real file systems for the storage tests: each `mount(size)` is a fresh tmpfs under the test's temp
dir, unmounted at teardown whatever happened."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent import spool_disk

Mount = Callable[..., Path]


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mount]:
    if os.geteuid() != 0:
        pytest.fail("the storage tests need root to mount small tmpfs file systems")
    mounted: list[Path] = []

    def make(size: str, *, ro: bool = False) -> Path:
        mnt = tmp_path / f"fs{len(mounted)}"
        mnt.mkdir()
        opts = f"size={size}" + (",ro" if ro else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], check=True)
        mounted.append(mnt)
        return mnt

    yield make
    for mnt in reversed(mounted):
        subprocess.run(["umount", "-l", str(mnt)], check=False)


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
