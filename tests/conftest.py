from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from broker import Mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    b = Mosquitto(tmp_path / "broker").start()
    try:
        yield b
    finally:
        b.kill()


@pytest.fixture(autouse=True)
def records_match_catalog(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every record an in-process test creates under a catalogued name must have the kind and top-level fields
    agent/catalog.py declares (the AST scan in tests/spine/test_catalog.py cannot see keys built at run time).
    Unknown names are left to that scan: unit tests stamp made-up names."""
    from agent import catalog, records

    problems: list[str] = []
    make = records.RecordFactory.make

    def checked(self: records.RecordFactory, kind: records.Kind, name: str, data: records.Data,
                episode: int | None = None) -> records.Record:
        r = make(self, kind, name, data, episode)
        if catalog.lookup(name) is not None:
            problems.extend(p for p in catalog.undeclared(r) if p not in problems)
        return r

    snapshot = records.RecordFactory.snapshot

    def checked_snapshot(self: records.RecordFactory, name: str, data: Mapping[str, Any], *, of: records.Record,
                         mono_ms: int) -> records.Record:
        r = snapshot(self, name, data, of=of, mono_ms=mono_ms)
        if catalog.lookup(name) is not None:
            problems.extend(p for p in catalog.undeclared(r) if p not in problems)
        return r

    monkeypatch.setattr(records.RecordFactory, "make", checked)
    monkeypatch.setattr(records.RecordFactory, "snapshot", checked_snapshot)
    yield
    assert not problems, f"declare in agent/catalog.py (then `python -m agent.catalog --write`): {problems}"
