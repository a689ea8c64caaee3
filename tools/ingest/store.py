"""SQLite store (the default). Dedup key: (vehicle, device, sid, boot, seq) — the batch identity.

One transaction per group of messages: a batch's row in `batches` gates its records, boot extent and episode
rows, so a redelivered batch (QoS 1 resend, a second worker) changes nothing. Several workers may share one
file: BEGIN IMMEDIATE takes the write lock up front and busy_timeout makes the others wait, not fail.
synchronous=FULL because the consumer acknowledges right after COMMIT: an acknowledged batch must survive a
power cut of the backend too.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import wire

from . import rows as R
from .rows import Message, fleet_of
from .store_common import (
    BATCH_COLS,
    DEAD_COLS,
    RECORD_COLS,
    SOFTWARE_COLS,
    STATUS_COLS,
    Store,
    WriteResult,
    settle_batches,
    split_episodes,
)

__all__ = ["SqliteStore", "Store", "WriteResult", "fleet_of", "open_store"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    vehicle TEXT NOT NULL, device TEXT NOT NULL, sid INTEGER NOT NULL, boot TEXT NOT NULL, seq INTEGER NOT NULL,
    fleet TEXT, received REAL NOT NULL, n_records INTEGER NOT NULL, synced INTEGER NOT NULL,
    t_first REAL, t_last REAL, mono_first REAL, mono_last REAL, digest TEXT,
    PRIMARY KEY (vehicle, device, sid, boot, seq));
CREATE TABLE IF NOT EXISTS records (
    vehicle TEXT NOT NULL, device TEXT NOT NULL, sid INTEGER NOT NULL, seq INTEGER NOT NULL,
    idx INTEGER NOT NULL, t REAL NOT NULL, mono REAL NOT NULL, boot TEXT NOT NULL, synced INTEGER NOT NULL,
    kind TEXT NOT NULL, name TEXT NOT NULL, value REAL, fields TEXT, episode INTEGER);
CREATE INDEX IF NOT EXISTS records_name ON records (vehicle, name, t);
CREATE TABLE IF NOT EXISTS status (
    vehicle TEXT NOT NULL, device TEXT NOT NULL, kind TEXT NOT NULL, t REAL NOT NULL, boot TEXT NOT NULL,
    fields TEXT NOT NULL, received REAL NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letter (received REAL NOT NULL, topic TEXT, reason TEXT, size INTEGER,
    head BLOB, detail TEXT);
CREATE TABLE IF NOT EXISTS episodes (
    vehicle TEXT NOT NULL, device TEXT NOT NULL, episode INTEGER NOT NULL, boot TEXT, name TEXT,
    t_begin REAL, mono_begin REAL, fields_begin TEXT, t_end REAL, mono_end REAL, duration_s REAL,
    fields_end TEXT, PRIMARY KEY (vehicle, device, episode));
CREATE TABLE IF NOT EXISTS software (
    vehicle TEXT NOT NULL, device TEXT NOT NULL, boot TEXT NOT NULL, component TEXT NOT NULL,
    version TEXT NOT NULL, t REAL NOT NULL, PRIMARY KEY (vehicle, device, boot, component));
"""

# Columns added after the first schema: a database written by the minimal ingest gets them on open.
ADDED_COLUMNS = {"batches": ("t_first REAL", "t_last REAL", "mono_first REAL", "mono_last REAL", "digest TEXT"),
                 "dead_letter": ("detail TEXT",)}
# One row per boot (a drive, for a head unit): its extent and record count, from the batches' extents.
BOOTS_VIEW = """CREATE VIEW IF NOT EXISTS boots AS SELECT vehicle, device, boot, MIN(fleet) AS fleet,
    MIN(t_first) AS first_t, MAX(t_last) AS last_t, MIN(mono_first) AS first_mono, MAX(mono_last) AS last_mono,
    SUM(n_records) AS n_records, MAX(synced) AS synced FROM batches GROUP BY vehicle, device, boot"""

def _ph(n: int) -> str:
    return ", ".join("?" * n)


class SqliteStore:
    dialect = "sqlite"

    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        self.path = str(path)
        # timeout = busy_timeout: other workers on the same file wait for the write lock.
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=60.0)
        # Two workers starting on a new file race to switch it to WAL and create the schema; SQLite answers
        # the loser "database is locked" at once (the busy handler is skipped to avoid a lock deadlock).
        deadline = time.monotonic() + 60.0
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute(f"PRAGMA synchronous={synchronous}")
                self.db.executescript(SCHEMA)
                self._migrate()
                break
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                time.sleep(0.05 + random.random() * 0.2)

    def _migrate(self) -> None:
        db = self.db
        for table, cols in ADDED_COLUMNS.items():
            have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
            for col in cols:
                if col.split()[0] not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {col}")
        db.execute(BOOTS_VIEW)
        if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'status_key'").fetchone() is None:
            # Retained births/deaths come again on every (re)subscribe: one row per message, not per delivery.
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM status WHERE rowid NOT IN (SELECT MIN(rowid) FROM status "
                       "GROUP BY vehicle, device, kind, boot, t)")
            db.execute("CREATE UNIQUE INDEX IF NOT EXISTS status_key ON status (vehicle, device, kind, boot, t)")
            db.execute("COMMIT")

    # ------------------------------------------------------------------------------------------ write
    def write(self, msgs: Sequence[Message]) -> WriteResult:
        rows = R.build(msgs)
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            new: list[R.BatchKey] = []
            stored: dict[R.BatchKey, str | None] = {}
            batches = sorted(rows.batches, key=lambda x: x[:5])
            for b in batches:
                if db.execute(f"INSERT OR IGNORE INTO batches ({BATCH_COLS}) VALUES ({_ph(14)})", b).rowcount:
                    new.append(b[:5])
                    continue
                # In-process and on the primary key: a lookup per duplicate costs no round trip.
                old = db.execute("SELECT digest FROM batches WHERE vehicle = ? AND device = ? AND sid = ? "
                                 "AND boot = ? AND seq = ?", b[:5]).fetchone()
                if old:
                    stored[b[:5]] = old[0]
            dups, clashes = settle_batches(rows, batches, set(new), stored)
            recs, eps = R.new_parts(rows, new)
            db.executemany(f"INSERT INTO records ({RECORD_COLS}) VALUES ({_ph(14)})", recs)
            begins, ends = split_episodes(eps)
            db.executemany("INSERT INTO episodes (vehicle, device, episode, boot, name, t_begin, mono_begin, "
                           "fields_begin) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                           "boot = excluded.boot, name = excluded.name, t_begin = excluded.t_begin, "
                           "mono_begin = excluded.mono_begin, fields_begin = excluded.fields_begin", begins)
            db.executemany("INSERT INTO episodes (vehicle, device, episode, boot, name, t_end, mono_end, "
                           "duration_s, fields_end) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE "
                           "SET boot = COALESCE(boot, excluded.boot), name = COALESCE(name, excluded.name), "
                           "t_end = excluded.t_end, mono_end = excluded.mono_end, duration_s = "
                           "excluded.duration_s, fields_end = excluded.fields_end", ends)
            n_status = 0
            for s in rows.status:
                n_status += db.execute(f"INSERT OR IGNORE INTO status ({STATUS_COLS}) VALUES ({_ph(7)})",
                                       s).rowcount
            db.executemany(f"INSERT OR IGNORE INTO software ({SOFTWARE_COLS}) VALUES ({_ph(6)})", rows.software)
            db.executemany(f"INSERT INTO dead_letter ({DEAD_COLS}) VALUES ({_ph(6)})", rows.dead)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return WriteResult(len(new), dups, len(recs), n_status, len(rows.dead), clashes, len(rows.status) - n_status)

    def is_transient(self, e: BaseException) -> bool:
        """Worth retrying the same messages later (not acknowledged meanwhile)."""
        if isinstance(e, sqlite3.OperationalError):
            text = str(e).lower()
            return any(s in text for s in ("locked", "busy", "disk i/o", "full", "unable to open"))
        return False

    # ----------------------------------------------------------------- the minimal ingest's interface
    def begin(self) -> None:
        self._pending: list[Message] = []

    def add(self, topic: str, obj: wire.Batch | wire.Status) -> bool:
        self._pending.append(Message(topic, b"", time.time(), obj))
        return True

    def dead_letter(self, topic: str, reason: str, payload: bytes) -> None:
        self._pending.append(Message(topic, payload, time.time(), None, reason))

    def commit(self) -> None:
        self.write(self._pending)
        self._pending = []

    # ------------------------------------------------------------------------------------------- read
    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return self.db.execute(sql, args).fetchall()

    def counts(self) -> dict[str, Any]:
        q = self.db.execute
        return {"batches": q("SELECT COUNT(*) FROM batches").fetchone()[0],
                "records": q("SELECT COUNT(*) FROM records").fetchone()[0],
                "status": q("SELECT COUNT(*) FROM status").fetchone()[0],
                "dead_letter": q("SELECT COUNT(*) FROM dead_letter").fetchone()[0]}

    def close(self) -> None:
        self.db.close()


def is_postgres(db: str) -> bool:
    return db.startswith(("postgresql://", "postgres://"))


def open_store(db: str) -> Store:
    """`postgresql://...` → PostgreSQL; `sqlite:///path` or a plain path → SQLite."""
    if is_postgres(db):
        from .store_pg import PostgresStore

        return PostgresStore(db)
    return SqliteStore(db.removeprefix("sqlite://") if db.startswith("sqlite:///") else db)
