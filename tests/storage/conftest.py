"""Small real file systems for the storage tests: each `mount(size)` is a fresh tmpfs under the test's temp
dir, unmounted at teardown whatever happened."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from storage_util import Mount


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mount]:
    if os.geteuid() != 0:
        pytest.fail("the storage tests need root to mount small tmpfs file systems")
    mounted: list[Path] = []

    def make(size: str, *, ro: bool = False, ext4_block: int = 0) -> Path:
        """tmpfs, or with ext4_block an ext4 image of that block size on a loop device (freed at unmount)."""
        mnt = tmp_path / f"fs{len(mounted)}"
        mnt.mkdir()
        if ext4_block:
            img = tmp_path / f"fs{len(mounted)}.img"
            img.touch()
            subprocess.run(["truncate", "-s", size, str(img)], check=True)
            subprocess.run(["mkfs.ext4", "-q", "-F", "-b", str(ext4_block), "-m", "0", str(img)], check=True)
            subprocess.run(["mount", "-o", "loop" + (",ro" if ro else ""), str(img), str(mnt)], check=True)
            mounted.append(mnt)
            return mnt
        opts = f"size={size}" + (",ro" if ro else "")
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], check=True)
        mounted.append(mnt)
        return mnt

    yield make
    for mnt in reversed(mounted):
        subprocess.run(["umount", "-l", str(mnt)], check=False)
