"""Reading the local event history (agent/history.py): `icvq events`, the status's summary, the offline reader.

Imported on first use through agent.history's names (`history.query_file`, `history.Query`, ...): the idle daemon
only writes, so it does not hold this code (issue 13: idle RSS). No threads; every read opens its own read-only
connection.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .dataclass_shared import dataclass
from .history import MAX_QUERY
from .records import Kind


@dataclass(frozen=True)
class Query:
    since_ms: int | None = None
    until_ms: int | None = None
    names: Sequence[str] = ()   # shell globs (SQLite GLOB: case-sensitive, * ? [..])
    limit: int = 100
    before_id: int | None = None  # paging: rows older than this id


def open_ro(path: str | Path, *, live: bool = False) -> tuple[sqlite3.Connection, str]:
    """Open read-only without creating or changing any file (unless `live`): safe on a car whose daemon is down.

    Returns (connection, note). A plain `mode=ro` open of a WAL database creates -wal and -shm files when
    they are missing, owned by whoever runs `icvq` (root, often), and the agent could then not open its
    own database. So: with both files present (the agent runs, or crashed) use them; with no -wal there is
    nothing to merge and `immutable=1` reads the file alone; a -wal without -shm cannot be read without
    creating one, so we read the checkpointed part only and say so.

    `live`: the agent reading its own history (the control socket) while its pipeline thread may write. The
    writer holds no connection between rare writes (agent/history.py), so the -wal is often absent, and an
    `immutable=1` read then would not see a write that starts meanwhile and could read pages its checkpoint
    is rewriting. The agent owns the files: a plain `mode=ro` open, which may create -wal and -shm as them.
    """
    p = Path(path).resolve()
    if not p.exists():
        raise FileNotFoundError(str(p))
    uri = "file:" + urllib.parse.quote(str(p))
    wal, shm = Path(f"{p}-wal").exists(), Path(f"{p}-shm").exists()
    note = ""
    if live or (wal and shm):
        mode = "?mode=ro"
    else:
        mode = "?mode=ro&immutable=1"
        if wal:
            note = "a write-ahead log without its index is left over: the newest rows may be missing"
    db = sqlite3.connect(uri + mode, uri=True, timeout=2.0)
    try:
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:
        db.close()
        raise
    return db, note


def _row(r: tuple[Any, ...]) -> dict[str, Any]:
    rid, wall_ms, boot, synced, kind, name, episode, data = r
    try:
        fields = json.loads(data)
    except ValueError:
        fields = {"raw": data}
    out: dict[str, Any] = {"id": rid, "t": wall_ms / 1000, "type": Kind(kind).label, "name": name,
                           "synced": bool(synced), "boot": boot}
    if isinstance(fields, dict):
        out["fields"] = fields
    else:
        out["value"] = fields
    if episode is not None:
        out["episode"] = episode
    return out


def query(db: sqlite3.Connection, q: Query) -> tuple[list[dict[str, Any]], bool]:
    """Newest first, at most q.limit rows; the flag says whether older rows match too."""
    where: list[str] = []
    args: list[int] = []
    if q.since_ms is not None:
        where.append("wall_ms >= ?")
        args.append(q.since_ms)
    if q.until_ms is not None:
        where.append("wall_ms < ?")
        args.append(q.until_ms)
    if q.before_id is not None:
        where.append("id < ?")
        args.append(q.before_id)
    if q.names:
        where.append("(" + " OR ".join("name GLOB ?" for _ in q.names) + ")")
    params: list[Any] = [*args, *q.names, min(int(q.limit), MAX_QUERY) + 1]
    limit = max(1, min(int(q.limit), MAX_QUERY))
    params[-1] = limit + 1
    sql = ("SELECT id, wall_ms, boot, synced, kind, name, episode, data FROM events"
           + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT ?")
    rows = db.execute(sql, params).fetchall()
    return [_row(r) for r in rows[:limit]], len(rows) > limit


def query_file(path: str | Path, q: Query, *, live: bool = False) -> tuple[list[dict[str, Any]], bool, str]:
    db, note = open_ro(path, live=live)
    try:
        rows, more = query(db, q)
    finally:
        db.close()
    return rows, more, note


def summary(db: sqlite3.Connection) -> dict[str, Any]:
    n, lo, hi = db.execute("SELECT COUNT(*), MIN(wall_ms), MAX(wall_ms) FROM events").fetchone()
    return {"events": n, "oldest": lo / 1000 if lo else None, "newest": hi / 1000 if hi else None}
