from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from broker import free_port
from fieldkit import Sshd


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    s = Sshd(tmp_path_factory.mktemp("sshd"), free_port()).start()
    try:
        yield s
    finally:
        s.stop()
