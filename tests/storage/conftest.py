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
