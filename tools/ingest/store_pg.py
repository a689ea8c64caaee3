"""PostgreSQL store: same tables and the same dedup rule as SQLite, for a fleet that outgrows one file.

Idempotent by construction: `INSERT INTO batches ... ON CONFLICT DO NOTHING RETURNING <identity>` tells which
batches are new in this transaction, and only their records, boot extents and episodes are written; one SELECT
then fetches the stored digests of all the others (a resend or a conflict), whatever their number. When two
workers race on the same batch, the second blocks on the primary key until the first commits, then inserts
nothing. Rows are written in key order so concurrent workers lock in the same order; a deadlock or a lost
connection is transient (the consumer retries; nothing was acknowledged). Records go in with COPY.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import psycopg

from . import rows as R
from .rows import Message
from .store_common import (
    BATCH_COLS,
    DEAD_COLS,
    RECORD_COLS,
    SOFTWARE_COLS,
    STATUS_COLS,
    WriteResult,
    settle_batches,
    split_episodes,
)

SCHEMA_LOCK = 0x1C7A  # pg_advisory_xact_lock key: workers starting together create the schema once

SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    vehicle text NOT NULL, device text NOT NULL, sid bigint NOT NULL, boot text NOT NULL, seq bigint NOT NULL,
    fleet text, received double precision NOT NULL, n_records integer NOT NULL, synced integer NOT NULL,
    t_first double precision, t_last double precision, mono_first double precision, mono_last double precision,
    digest text, PRIMARY KEY (vehicle, device, sid, boot, seq));
ALTER TABLE batches ADD COLUMN IF NOT EXISTS digest text;
CREATE TABLE IF NOT EXISTS records (
    vehicle text NOT NULL, device text NOT NULL, sid bigint NOT NULL, seq bigint NOT NULL, idx integer NOT NULL,
    t double precision NOT NULL, mono double precision NOT NULL, boot text NOT NULL, synced integer NOT NULL,
    kind text NOT NULL, name text NOT NULL, value double precision, fields text, episode bigint);
CREATE INDEX IF NOT EXISTS records_name ON records (vehicle, name, t);
CREATE TABLE IF NOT EXISTS status (
    vehicle text NOT NULL, device text NOT NULL, kind text NOT NULL, t double precision NOT NULL,
    boot text NOT NULL, fields text NOT NULL, received double precision NOT NULL,
    UNIQUE (vehicle, device, kind, boot, t));
CREATE TABLE IF NOT EXISTS dead_letter (received double precision NOT NULL, topic text, reason text, size integer,
    head bytea, detail text);
CREATE TABLE IF NOT EXISTS episodes (
    vehicle text NOT NULL, device text NOT NULL, episode bigint NOT NULL, boot text, name text,
    t_begin double precision, mono_begin double precision, fields_begin text, t_end double precision,
    mono_end double precision, duration_s double precision, fields_end text,
    PRIMARY KEY (vehicle, device, episode));
CREATE TABLE IF NOT EXISTS software (
    vehicle text NOT NULL, device text NOT NULL, boot text NOT NULL, component text NOT NULL,
    version text NOT NULL, t double precision NOT NULL, PRIMARY KEY (vehicle, device, boot, component));
CREATE OR REPLACE VIEW boots AS SELECT vehicle, device, boot, MIN(fleet) AS fleet, MIN(t_first) AS first_t,
    MAX(t_last) AS last_t, MIN(mono_first) AS first_mono, MAX(mono_last) AS last_mono,
    SUM(n_records) AS n_records, MAX(synced) AS synced FROM batches GROUP BY vehicle, device, boot;
"""

BATCH_TYPES = ("text[], text[], bigint[], text[], bigint[], text[], float8[], int[], int[], float8[], float8[], "
               "float8[], float8[], text[]")


KEY_TYPES = "text[], text[], bigint[], text[], bigint[]"


def _key(row: Sequence[Any]) -> R.BatchKey:
    v, d, sid, boot, seq = row[:5]
    return v, d, int(sid), boot, int(seq)


def _unnest(types: str) -> str:
    return "SELECT * FROM unnest(" + ", ".join(f"%s::{t.strip()}" for t in types.split(",")) + ")"


def _columns(rows: Sequence[tuple[Any, ...]], n: int) -> list[list[Any]]:
    return [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(n)]


class PostgresStore:
    dialect = "postgresql"

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[Any] | None = None
        with self.conn.transaction():
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            for stmt in filter(str.strip, SCHEMA.split(";")):
                self.conn.execute(stmt)

    @property
    def conn(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
        return self._conn

    def write(self, msgs: Sequence[Message]) -> WriteResult:
        rows = R.build(msgs)
        conn = self.conn
        with conn.transaction(), conn.cursor() as cur:
            new: list[R.BatchKey] = []
            dups = clashes = 0
            if rows.batches:
                batches = sorted(rows.batches, key=lambda x: x[:5])
                cur.execute(f"INSERT INTO batches ({BATCH_COLS}) {_unnest(BATCH_TYPES)} "
                            "ON CONFLICT DO NOTHING RETURNING vehicle, device, sid, boot, seq",
                            _columns(batches, 14))
                new = sorted(_key(row) for row in cur.fetchall())
                fresh = set(new)
                dups, clashes = settle_batches(rows, batches, fresh,
                                               self._digests(cur, [b[:5] for b in batches if b[:5] not in fresh]))
            recs, eps = R.new_parts(rows, new)
            if recs:
                with cur.copy(f"COPY records ({RECORD_COLS}) FROM STDIN") as cp:
                    for r in recs:
                        cp.write_row(r)
            begins, ends = split_episodes(eps)
            if begins:
                cur.execute(
                    "INSERT INTO episodes (vehicle, device, episode, boot, name, t_begin, mono_begin, "
                    f"fields_begin) {_unnest('text[], text[], int8[], text[], text[], float8[], float8[], text[]')}"
                    " ON CONFLICT (vehicle, device, episode) DO UPDATE SET boot = excluded.boot, "
                    "name = excluded.name, t_begin = excluded.t_begin, mono_begin = excluded.mono_begin, "
                    "fields_begin = excluded.fields_begin", _columns(begins, 8))
            if ends:
                cur.execute(
                    "INSERT INTO episodes (vehicle, device, episode, boot, name, t_end, mono_end, duration_s, "
                    "fields_end) "
                    f"{_unnest('text[], text[], int8[], text[], text[], float8[], float8[], float8[], text[]')}"
                    " ON CONFLICT (vehicle, device, episode) DO UPDATE SET "
                    "boot = COALESCE(episodes.boot, excluded.boot), name = COALESCE(episodes.name, excluded.name), "
                    "t_end = excluded.t_end, mono_end = excluded.mono_end, duration_s = excluded.duration_s, "
                    "fields_end = excluded.fields_end", _columns(ends, 9))
            n_status = 0
            if rows.status:
                cur.execute(f"INSERT INTO status ({STATUS_COLS}) "
                            f"{_unnest('text[], text[], text[], float8[], text[], text[], float8[]')} "
                            "ON CONFLICT DO NOTHING", _columns(sorted(rows.status), 7))
                n_status = max(cur.rowcount, 0)
            if rows.software:
                cur.execute(f"INSERT INTO software ({SOFTWARE_COLS}) "
                            f"{_unnest('text[], text[], text[], text[], text[], float8[]')} ON CONFLICT DO NOTHING",
                            _columns(sorted(rows.software), 6))
            if rows.dead:  # after the batches: conflicts found there are dead letters too
                cur.executemany(f"INSERT INTO dead_letter ({DEAD_COLS}) "
                                "VALUES (%s, %s, %s, %s, %s, %s)", rows.dead)
        return WriteResult(len(new), dups, len(recs), n_status, len(rows.dead), clashes, len(rows.status) - n_status)

    @staticmethod
    def _digests(cur: psycopg.Cursor[Any], keys: Sequence[R.BatchKey]) -> dict[R.BatchKey, str | None]:
        """The stored digests of the batches the insert found there, in one query. A statement of its own, not
        part of the INSERT: a batch a racing worker committed while the insert waited on its key is newer than
        the insert's snapshot, and only a later statement sees it (READ COMMITTED)."""
        if not keys:
            return {}
        cur.execute(f"SELECT b.vehicle, b.device, b.sid, b.boot, b.seq, b.digest FROM batches b JOIN "
                    f"({_unnest(KEY_TYPES)}) AS k (vehicle, device, sid, boot, seq) "
                    "USING (vehicle, device, sid, boot, seq)", _columns(keys, 5))
        return {_key(row): row[5] for row in cur.fetchall()}

    def is_transient(self, e: BaseException) -> bool:
        # OperationalError covers lost connections, deadlocks and serialization failures (TransactionRollback).
        return isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError))

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql.replace("?", "%s"), args)
            return cur.fetchall() if cur.description else []

    def counts(self) -> dict[str, Any]:
        return {t: self.query(f"SELECT COUNT(*) FROM {t}")[0][0]
                for t in ("batches", "records", "status", "dead_letter")}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
