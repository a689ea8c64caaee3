"""Fixtures for the backend tests: a persistent broker, worker processes, a throwaway PostgreSQL, Chromium.

Nothing here skips: a missing tool is a failure that says how to install it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from backend_util import Worker, persistent_broker
from broker import Mosquitto

from tools.ingest.pgtemp import MISSING, TempPostgres, bindir


@pytest.fixture
def pbroker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = persistent_broker(tmp_path / "broker").start()
    try:
        yield b
    finally:
        b.kill()


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for w in started:
        if w.proc and w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(10)


@pytest.fixture(scope="session")
def postgres() -> Iterator[TempPostgres]:
    if bindir() is None:
        pytest.fail(MISSING)
    pg = TempPostgres(fsync=False).start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture
def pg_url(postgres: TempPostgres) -> str:
    """A fresh database per test in the session's cluster."""
    import psycopg

    name = f"t{os.getpid()}_{abs(hash(os.environ.get('PYTEST_CURRENT_TEST', ''))) % 10**8}"
    with psycopg.connect(postgres.url, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name}")
    return postgres.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed: run `make deps` (tools/deps/apt-backend.txt)")
    return exe
