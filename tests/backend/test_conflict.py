"""An identity reused with other bytes is a conflict (dead letter, counted, the first copy kept), not a
duplicate; a retained status message delivered again is counted as a replay. Both stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from backend_util import BOOT, STATUS_TOPIC, batch, msg, rec

from agent import wire
from agent.records import Kind
from tools.ingest.store import SqliteStore


def _check(s: Any) -> None:
    first = batch(1, [rec(Kind.METRIC, "cpu", 1000.0, 5.0)])
    other = batch(1, [rec(Kind.METRIC, "cpu", 1000.0, 99.0)])        # same identity, other bytes
    assert first != other
    r = s.write([msg(first), msg(other)])                             # inside one group
    assert (r.stored, r.duplicates, r.conflicts, r.dead) == (1, 0, 1, 1)
    r = s.write([msg(other), msg(first)])                             # later: conflict, then a true resend
    assert (r.stored, r.duplicates, r.conflicts, r.dead) == (0, 1, 1, 1)
    assert s.query("SELECT value FROM records") == [(5.0,)], "the first copy is kept"
    assert s.query("SELECT reason, COUNT(*) FROM dead_letter GROUP BY reason") == [("conflict", 2)]
    birth = wire.encode_status("birth", "VIN1", "hu", BOOT, 999_000, {"agent": "0.1.0"})
    assert s.write([msg(birth, STATUS_TOPIC)]).status_replays == 0
    r = s.write([msg(birth, STATUS_TOPIC)])                           # the retained birth, on a resubscribe
    assert (r.status, r.status_replays) == (0, 1)


def test_sqlite_store_tells_conflicts_from_resends(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "i.db")
    _check(s)
    s.close()


def test_postgres_store_tells_conflicts_from_resends(pg_url: str) -> None:
    from tools.ingest.store_pg import PostgresStore

    s = PostgresStore(pg_url)
    _check(s)
    s.close()


@pytest.mark.parametrize("payload", [b""])
def test_a_batch_without_its_payload_never_conflicts(tmp_path: Path, payload: bytes) -> None:
    """The minimal ingest's add() has the decoded batch only: no digest, so no conflict can be claimed."""
    s = SqliteStore(tmp_path / "i.db")
    s.begin()
    b = wire.decode(batch(1, [rec(Kind.METRIC, "cpu", 1000.0, 5.0)]))
    assert isinstance(b, wire.Batch)
    s.add("icvq/v1/test/VIN1/hu/batch", b)
    s.commit()
    r = s.write([msg(batch(1, [rec(Kind.METRIC, "cpu", 1000.0, 7.0)]))])
    assert (r.duplicates, r.conflicts) == (1, 0)
    s.close()
