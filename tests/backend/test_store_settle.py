"""A group that mixes new batches, resends and conflicts settles the same in both stores: each batch stored
once, every later copy a duplicate or a conflict; PostgreSQL fetches the stored digests of all the group's
duplicates in one query, however many there are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
from backend_util import batch, msg, rec

from agent.records import Kind
from tools.ingest.rows import Message
from tools.ingest.store import SqliteStore


def _b(seq: int, value: float, vehicle: str = "VIN1") -> Message:
    return msg(batch(seq, [rec(Kind.METRIC, "cpu", 1000.0 + seq, value)], vehicle=vehicle),
               f"icvq/v1/test/{vehicle}/hu/batch")


def _check(s: Any) -> None:
    r = s.write([_b(q, 1.0, v) for q in (1, 2, 3) for v in ("VIN1", "VIN2")])
    assert (r.stored, r.duplicates, r.conflicts) == (6, 0, 0)
    group = [_b(1, 1.0), _b(2, 9.0), _b(3, 1.0, "VIN2"), _b(4, 1.0), _b(4, 1.0),
             _b(5, 1.0, "VIN2"), _b(5, 7.0, "VIN2"), _b(2, 1.0, "VIN2")]
    r = s.write(group)
    # New: (VIN1, 4) and (VIN2, 5); resends: (VIN1, 1), (VIN2, 3), (VIN2, 2) and the second (VIN1, 4);
    # conflicts: (VIN1, 2) with other bytes and the second (VIN2, 5).
    assert (r.stored, r.duplicates, r.conflicts, r.dead) == (2, 4, 2, 2)
    assert s.query("SELECT COUNT(*) FROM batches") == [(8,)]
    assert s.query("SELECT vehicle, seq, value FROM records WHERE seq IN (2, 4, 5) ORDER BY vehicle, seq") == [
        ("VIN1", 2, 1.0), ("VIN1", 4, 1.0), ("VIN2", 2, 1.0), ("VIN2", 5, 1.0)]
    r = s.write(group)                                     # the whole group again: nothing new
    assert (r.stored, r.duplicates, r.conflicts) == (0, 6, 2)


def test_sqlite_store_settles_a_mixed_group(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "i.db")
    _check(s)
    s.close()


class _Counting(psycopg.Cursor[Any]):
    statements: list[str] = []

    def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
        _Counting.statements.append(str(query))
        return super().execute(query, *args, **kwargs)


def test_postgres_store_settles_a_mixed_group_with_one_digest_query(pg_url: str) -> None:
    from tools.ingest.store_pg import PostgresStore

    s = PostgresStore(pg_url)
    _check(s)
    s.conn.cursor_factory = _Counting
    _Counting.statements.clear()
    dups = [_b(q, 1.0, v) for q in (1, 3) for v in ("VIN1", "VIN2")]
    r = s.write(dups)
    assert (r.stored, r.duplicates, r.conflicts) == (0, 4, 0)
    assert sum("FROM batches" in q for q in _Counting.statements) == 1, _Counting.statements
    s.close()
