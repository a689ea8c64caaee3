"""Durable, bounded store-and-forward: the only module that touches the spool database.

SQLite in WAL mode with synchronous=FULL: a committed record survives kill -9 and power cut, the WAL's
checksums make a torn tail harmless, and one file is easy to inspect in the field. Records are committed in
groups (the pipeline calls put() about once a second), not one write per sample, to spare the flash.

Records wait unsealed until the uplink has room; sealing encodes them into a wire batch with the next
sequence number in the same transaction, so a sealed batch's bytes and identity never change: resends after
a crash are byte-identical and the backend dedups them. A batch is deleted only on PUBACK.

When full (max_mib), the oldest periodic samples go first, then the oldest events, then the oldest sealed
batches; every drop is counted by reason and the counts are persisted and reported upstream. When the disk is
full or read-only, new records wait in memory (bounded, same eviction order) and are written once it works.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from . import wire
from .errors import WireError
from .private import private_db, private_dir
from .records import Kind, Record

log = logging.getLogger("icvq.spool")

ROW_OVERHEAD = 64  # bytes of SQLite row, index and page slack per stored row, for the size cap
RETRY_DISK_S = 5.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT, prio INTEGER NOT NULL, boot TEXT NOT NULL,
    synced INTEGER NOT NULL, wall_ms INTEGER NOT NULL, mono_ms INTEGER NOT NULL, body BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS records_prio ON records (prio, id);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY, created_ms INTEGER NOT NULL, n_records INTEGER NOT NULL,
    n_events INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
"""


@dataclass(frozen=True)
class SealedBatch:
    seq: int
    payload: bytes
    n_records: int
    created_ms: int


def _body(r: Record) -> bytes:
    data = dict(r.data) if isinstance(r.data, dict) else r.data
    return msgpack.packb([int(r.kind), r.name, data, r.episode])


def _record(boot: str, synced: int, wall_ms: int, mono_ms: int, body: bytes) -> Record:
    kind, name, data, episode = msgpack.unpackb(body, raw=False, strict_map_key=False)
    return Record(Kind(kind), name, wall_ms, mono_ms, boot, bool(synced), data, episode)


def _disk_error(e: sqlite3.Error) -> bool:
    text = str(e).lower()
    return any(s in text for s in ("full", "readonly", "read-only", "disk i/o", "unable to open",
                                   "locked", "no such table"))


class Spool:
    def __init__(self, path: str | os.PathLike[str], max_bytes: int, *, memory_max_records: int = 20000,
                 max_record_bytes: int = 48 * 1024, now_ms: Callable[[], int] | None = None) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.memory_max_records = memory_max_records
        self.max_record_bytes = max_record_bytes
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))
        self._db: sqlite3.Connection | None = None
        self._mem: deque[Record] = deque()
        self._degraded_since: float | None = None
        self._last_disk_try = 0.0
        self.last_disk_error = ""
        self.drops: dict[str, int] = {}
        self._drops_dirty = False
        self.sid = 0
        self.n_records = 0
        self.record_body_bytes = 0
        self.n_batches = 0
        self.bytes = 0
        self.recovered_from_corruption = False

    # ------------------------------------------------------------------------------------ open / close
    def open(self) -> str:
        """Open (creating, or recovering from corruption). Returns how the previous run ended: "clean",
        "unclean" (power cut, crash, kill -9: a quality signal in itself) or "first" for a new spool."""
        private_dir(self.path.parent)
        try:
            return self._connect()
        except sqlite3.DatabaseError as e:
            if _disk_error(e) and "malformed" not in str(e).lower():
                raise
            # A flash card that lied about a write: keep the evidence, start a fresh spool, say so.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("spool %s is corrupt (%s); moved aside to %s", self.path, e, aside)
            for suffix in ("", "-wal", "-shm"):
                p = Path(str(self.path) + suffix)
                if p.exists():
                    p.rename(Path(str(aside) + suffix))
            self.recovered_from_corruption = True
            self._connect()
            self._count_drop("spool_corrupt", 1)
            return "unclean"

    def _connect(self) -> str:
        private_db(self.path)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA journal_size_limit=4194304")
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: {ok}")
            db.executescript(SCHEMA)
            meta = dict(db.execute("SELECT k, v FROM meta").fetchall())
            previous = {"1": "clean", "0": "unclean"}.get(meta.get("clean", ""), "first")
            db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', '0')")
            if "sid" not in meta:
                meta["sid"] = str(secrets.randbits(63))
                meta.setdefault("next_seq", "1")
                db.execute("BEGIN IMMEDIATE")
                db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                               [("sid", meta["sid"]), ("next_seq", meta["next_seq"])])
                db.execute("COMMIT")
        except BaseException:
            db.close()
            raise
        self._db = db
        self.sid = int(meta["sid"])
        self.drops = {**json.loads(meta.get("drops", "{}")), **self.drops}
        self._recount()
        return previous

    def _recount(self) -> None:
        db = self._conn
        n, b = db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM records").fetchone()
        nb, bb = db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM batches").fetchone()
        self.n_records, self.n_batches = n, nb
        self.record_body_bytes = b
        self.bytes = b + bb + (n + nb) * ROW_OVERHEAD

    def close(self) -> None:
        if self._db is not None:
            try:
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', '1')")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass
            self._db.close()
            self._db = None

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("spool is not open")
        return self._db

    # ------------------------------------------------------------------------------------------ write
    @property
    def memory_records(self) -> int:
        """Records waiting in memory while the disk is full or read-only."""
        return len(self._mem)

    @property
    def degraded(self) -> bool:
        return self._degraded_since is not None

    def put(self, records: Iterable[Record]) -> None:
        """Accept records durably (one transaction), or into the bounded memory queue when the disk fails."""
        incoming = []
        for r in records:
            try:
                wire.check_record(r)
                size = len(_body(r))
            except (WireError, TypeError, ValueError, OverflowError):
                self._count_drop("invalid", 1)
                continue
            if size > self.max_record_bytes:
                self._count_drop("oversize", 1)
            else:
                incoming.append(r)
        if self.degraded:
            self._mem.extend(incoming)
            self._bound_memory()
            if time.monotonic() - self._last_disk_try < RETRY_DISK_S:
                return
            incoming = list(self._mem)
            self._mem.clear()
        if not incoming:
            return
        try:
            self._write(incoming)
        except sqlite3.Error as e:
            self._enter_degraded(e)
            self._mem.extendleft(reversed(incoming))
            self._bound_memory()
            return
        if self.degraded:
            log.warning("spool writable again after %.0f s; %d records written from memory",
                        time.monotonic() - (self._degraded_since or 0), len(incoming))
            self._degraded_since = None
            self.last_disk_error = ""

    def _write(self, records: Sequence[Record]) -> None:
        rows = [(r.priority, r.boot, int(r.synced), r.wall_ms, r.mono_ms, _body(r)) for r in records]
        need = sum(len(b) + ROW_OVERHEAD for *_, b in rows)
        with self._txn() as db:
            dropped = self._evict(self.bytes + need - self.max_bytes) if self.bytes + need > self.max_bytes \
                else {}
            if need > self.max_bytes:
                # A single put larger than the whole spool: keep the newest that fit.
                keep, size = [], 0
                for row in reversed(rows):
                    size += len(row[-1]) + ROW_OVERHEAD
                    if size > self.max_bytes:
                        break
                    keep.append(row)
                dropped["spool_full.incoming"] = len(rows) - len(keep)
                rows = keep[::-1]
                need = sum(len(b) + ROW_OVERHEAD for *_, b in rows)
            db.executemany("INSERT INTO records (prio, boot, synced, wall_ms, mono_ms, body) "
                           "VALUES (?, ?, ?, ?, ?, ?)", rows)
            pending = self._persist_drops(db, dropped) if dropped or self._drops_dirty else self.drops
        self.drops = pending
        self._drops_dirty = False
        if dropped:
            self._recount()
        else:
            self._add(len(rows), 0, need)
            self.record_body_bytes += sum(len(row[-1]) for row in rows)
        self._last_disk_try = time.monotonic()

    def _add(self, n: int, nb: int, b: int) -> None:
        self.n_records += n
        self.n_batches += nb
        self.bytes += b

    def _rollback(self) -> None:
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    @contextlib.contextmanager
    def _txn(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed whole, or rolled back whole."""
        db = self._conn
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise

    def _persist_drops(self, db: sqlite3.Connection, dropped: dict[str, int]) -> dict[str, int]:
        drops = self._merge_drops(dropped)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('drops', ?)", (json.dumps(drops),))
        return drops

    def _evict(self, excess: int) -> dict[str, int]:
        """Free at least `excess` bytes (plus 5 % headroom so we do not evict on every put)."""
        target = excess + self.max_bytes // 20
        db = self._conn
        freed = 0
        dropped: dict[str, int] = {}
        # Spools written before snapshots existed hold events at prio 1: they go with the snapshots, still
        # after every metric.
        for prio, reason in ((0, "spool_full.metric"), (1, "spool_full.snapshot"), (2, "spool_full.event")):
            while freed < target:
                rows = db.execute("SELECT id, LENGTH(body) FROM records WHERE prio = ? ORDER BY id LIMIT 256",
                                  (prio,)).fetchall()
                if not rows:
                    break
                ids = []
                for rid, size in rows:
                    ids.append(rid)
                    freed += size + ROW_OVERHEAD
                    if freed >= target:
                        break
                db.execute(f"DELETE FROM records WHERE id IN ({','.join('?' * len(ids))})", ids)
                dropped[reason] = dropped.get(reason, 0) + len(ids)
        while freed < target:
            row = db.execute("SELECT seq, n_records, LENGTH(payload) FROM batches ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                break
            db.execute("DELETE FROM batches WHERE seq = ?", (row[0],))
            freed += row[2] + ROW_OVERHEAD
            dropped["spool_full.batch_records"] = dropped.get("spool_full.batch_records", 0) + row[1]
        return dropped

    def _merge_drops(self, dropped: dict[str, int]) -> dict[str, int]:
        out = dict(self.drops)
        for k, v in dropped.items():
            if v:
                out[k] = out.get(k, 0) + v
        return out

    def _count_drop(self, reason: str, n: int) -> None:
        if n:
            self.drops = self._merge_drops({reason: n})
            self._drops_dirty = True

    def _enter_degraded(self, e: sqlite3.Error) -> None:
        self._last_disk_try = time.monotonic()
        msg = f"{type(e).__name__}: {e}"
        if not self.degraded:
            log.error("spool not writable (%s); keeping up to %d records in memory", msg,
                      self.memory_max_records)
            self._degraded_since = time.monotonic()
        self.last_disk_error = msg

    def _bound_memory(self) -> None:
        excess = len(self._mem) - self.memory_max_records
        if excess <= 0:
            return
        # Same policy as on disk: oldest periodic samples first, then oldest events.
        kept: deque[Record] = deque()
        dropped_m = 0
        for r in self._mem:
            if excess > 0 and r.kind.evictable_first:
                excess -= 1
                dropped_m += 1
            else:
                kept.append(r)
        dropped_e = 0
        while excess > 0 and kept:
            kept.popleft()
            excess -= 1
            dropped_e += 1
        self._mem = kept
        self._count_drop("memory_full.metric", dropped_m)
        self._count_drop("memory_full.event", dropped_e)

    # ----------------------------------------------------------------------------------------- batches
    def unsealed_summary(self) -> tuple[int, int, int | None]:
        """(records, body bytes, wall_ms of the oldest) waiting to be sealed; O(1), asked on every step."""
        if not self.n_records:
            return 0, 0, None
        row = self._conn.execute("SELECT wall_ms FROM records ORDER BY id LIMIT 1").fetchone()
        return self.n_records, self.record_body_bytes, row[0] if row else None

    def seal(self, make_id: Callable[[str, int], wire.BatchId], max_bytes: int, *,
             max_records: int = 5000, compress: str = "auto") -> SealedBatch | None:
        """Move the oldest unsealed records (one boot, one sync state) into a new batch of ≤ max_bytes."""
        db = self._conn
        rows = db.execute("SELECT id, boot, synced, wall_ms, mono_ms, body FROM records ORDER BY id LIMIT ?",
                          (max_records,)).fetchall()
        if not rows:
            return None
        boot, synced = rows[0][1], rows[0][2]
        budget = 0
        take: list[Any] = []
        for row in rows:
            budget += len(row[5]) + 6
            if row[1] != boot or row[2] != synced or (take and budget > max_bytes):
                break
            take.append(row)
        seq = int(db.execute("SELECT v FROM meta WHERE k = 'next_seq'").fetchone()[0])
        bid = make_id(boot, seq)
        records = [_record(b, s, w, m, body) for _, b, s, w, m, body in take]
        payload = wire.encode_batch(bid, records, compress=compress)
        while len(payload) > max_bytes and len(records) > 1:
            records = records[: len(records) // 2]
            payload = wire.encode_batch(bid, records, compress=compress)
        take = take[: len(records)]
        if len(payload) > max_bytes:
            # One record that cannot fit any batch: it would block the queue forever.
            self._drop_rows([take[0][0]], "oversize")
            return self.seal(make_id, max_bytes, max_records=max_records, compress=compress)
        n_events = sum(1 for r in records if not r.kind.evictable_first)
        ids = [row[0] for row in take]
        with self._txn():
            db.execute("INSERT INTO batches VALUES (?, ?, ?, ?, ?)",
                       (seq, self._now_ms(), len(records), n_events, payload))
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                db.execute(f"DELETE FROM records WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            db.execute("UPDATE meta SET v = ? WHERE k = 'next_seq'", (str(seq + 1),))
        freed = sum(len(row[5]) for row in take) + len(take) * ROW_OVERHEAD
        self._add(-len(take), 1, len(payload) + ROW_OVERHEAD - freed)
        self.record_body_bytes -= sum(len(row[5]) for row in take)
        return SealedBatch(seq, payload, len(records), self._now_ms())

    def _drop_rows(self, ids: list[int], reason: str) -> None:
        with self._txn() as db:
            db.execute(f"DELETE FROM records WHERE id IN ({','.join('?' * len(ids))})", ids)
            self.drops = self._persist_drops(db, {reason: len(ids)})
        self._recount()

    def unseal(self, seq: int) -> None:
        """Put a sealed batch's records back in the queue (the broker refused its size); they are sealed
        again, smaller, under new sequence numbers. Safe because the broker never accepted the old one."""
        row = self._conn.execute("SELECT payload FROM batches WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            return
        batch = wire.decode(row[0], wire.Limits(max_payload=1 << 30, max_inflated=1 << 30))
        assert isinstance(batch, wire.Batch)
        with self._txn() as db:
            db.execute("DELETE FROM batches WHERE seq = ?", (seq,))
            # Negative ids sort first, so the re-queued records keep their place ahead of newer ones.
            low = db.execute("SELECT MIN(id) FROM records").fetchone()[0] or 1
            start = min(low, 1) - len(batch.records) - 1
            db.executemany("INSERT INTO records (id, prio, boot, synced, wall_ms, mono_ms, body) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [(start + i, r.priority, r.boot, int(r.synced), r.wall_ms, r.mono_ms, _body(r))
                            for i, r in enumerate(batch.records)])
        self._recount()

    def drop_batch(self, seq: int, reason: str) -> None:
        row = self._conn.execute("SELECT n_records FROM batches WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            return
        with self._txn() as db:
            db.execute("DELETE FROM batches WHERE seq = ?", (seq,))
            self.drops = self._persist_drops(db, {reason: row[0]})
        self._recount()

    def sealed(self, exclude: Iterable[int] = (), limit: int = 100) -> list[SealedBatch]:
        """Sealed batches not yet acknowledged, oldest first, skipping those already in flight."""
        if limit <= 0 or not self.n_batches:
            return []
        skip = set(exclude)
        # Sequence numbers first: payloads are read only for the batches about to be sent.
        want = [seq for (seq,) in self._conn.execute("SELECT seq FROM batches ORDER BY seq") if seq not in skip]
        out = []
        for seq in want[:limit]:
            row = self._conn.execute("SELECT created_ms, n_records, payload FROM batches WHERE seq = ?",
                                     (seq,)).fetchone()
            if row is not None:
                out.append(SealedBatch(seq, row[2], row[1], row[0]))
        return out

    def ack(self, seqs: Iterable[int]) -> int:
        seqs = list(seqs)
        if not seqs:
            return 0
        with self._txn() as db:
            freed = db.execute(f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM batches "
                               f"WHERE seq IN ({','.join('?' * len(seqs))})", seqs).fetchone()
            db.execute(f"DELETE FROM batches WHERE seq IN ({','.join('?' * len(seqs))})", seqs)
        self._add(0, -freed[0], -(freed[1] + freed[0] * ROW_OVERHEAD))
        return int(freed[0])

    # ------------------------------------------------------------------------------------------ views
    def stats(self) -> dict[str, Any]:
        oldest = None
        if self._db is not None:
            # Oldest by insertion order: O(1) on the primary keys, cheap enough for every `icvq status`.
            a = self._db.execute("SELECT wall_ms FROM records ORDER BY id LIMIT 1").fetchone()
            b = self._db.execute("SELECT created_ms FROM batches ORDER BY seq LIMIT 1").fetchone()
            cands = [x[0] for x in (a, b) if x is not None]
            oldest = min(cands) if cands else None
        return {"path": str(self.path), "records": self.n_records, "batches": self.n_batches,
                "bytes": self.bytes, "max_bytes": self.max_bytes, "oldest_wall_ms": oldest,
                "memory_records": self.memory_records, "degraded": self.degraded,
                "last_disk_error": self.last_disk_error, "drops": dict(self.drops), "sid": self.sid}
