"""SQLite store for ingested batches. Dedup key: (vehicle, device, sid, boot, seq) — the batch identity."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from agent import wire

SCHEMA = """
PRAGMA journal_mode=WAL;
CREATE TABLE IF NOT EXISTS batches (
    vehicle TEXT NOT NULL, device TEXT NOT NULL, sid INTEGER NOT NULL, boot TEXT NOT NULL, seq INTEGER NOT NULL,
    fleet TEXT, received REAL NOT NULL, n_records INTEGER NOT NULL, synced INTEGER NOT NULL,
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
    head BLOB);
"""


def fleet_of(topic: str) -> str | None:
    parts = topic.split("/")
    return parts[-4] if len(parts) >= 5 else None


class SqliteStore:
    def __init__(self, path: str | Path) -> None:
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.db.executescript(SCHEMA)
        self.db.execute("PRAGMA synchronous=NORMAL")

    def begin(self) -> None:
        self.db.execute("BEGIN")

    def commit(self) -> None:
        self.db.execute("COMMIT")

    def add(self, topic: str, obj: wire.Batch | wire.Status) -> bool:
        """Store one decoded payload inside the caller's transaction; False when it was a duplicate."""
        now = time.time()
        if isinstance(obj, wire.Status):
            self.db.execute("INSERT INTO status VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (obj.vehicle, obj.device, obj.kind, obj.t_ms / 1000, obj.boot,
                             json.dumps(wire.to_json(obj)["fields"]), now))
            return True
        b = obj.id
        cur = self.db.execute("INSERT OR IGNORE INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                              (b.vehicle, b.device, b.sid, b.boot, b.seq, fleet_of(topic), now,
                               len(obj.records), int(obj.synced)))
        if cur.rowcount == 0:
            return False
        rows = []
        for i, r in enumerate(obj.records):
            j = wire.record_json(r)
            rows.append((b.vehicle, b.device, b.sid, b.seq, i, j["t"], j["mono"], r.boot, int(r.synced),
                         j["type"], r.name, j.get("value"),
                         json.dumps(j["fields"]) if "fields" in j else None, r.episode))
        self.db.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        return True

    def dead_letter(self, topic: str, reason: str, payload: bytes) -> None:
        self.db.execute("INSERT INTO dead_letter VALUES (?, ?, ?, ?, ?)",
                        (time.time(), topic, reason, len(payload), payload[:64]))

    def counts(self) -> dict[str, Any]:
        q = self.db.execute
        return {"batches": q("SELECT COUNT(*) FROM batches").fetchone()[0],
                "records": q("SELECT COUNT(*) FROM records").fetchone()[0],
                "status": q("SELECT COUNT(*) FROM status").fetchone()[0],
                "dead_letter": q("SELECT COUNT(*) FROM dead_letter").fetchone()[0]}

    def close(self) -> None:
        self.db.close()
