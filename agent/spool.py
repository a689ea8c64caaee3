"""Durable, bounded store-and-forward: the only module that touches the spool database.

SQLite in WAL mode with synchronous=FULL: a committed record survives kill -9 and power cut, the WAL's
checksums make a torn tail harmless, and one file is easy to inspect in the field. Records are committed in
groups (the pipeline calls put() about once a second), not one write per sample, to spare the flash.
put() msgpack-encodes each record once: the size check, the chunking and the row share the bytes (encoding
three times made a put of 10,000 samples 49 ms instead of 38 ms on the dev machine).
Threads: none of its own; the pipeline thread is the only writer, the control thread reads stats().

Records wait unsealed until the uplink has room; sealing encodes them into a wire batch with the next
sequence number in the same transaction, so a sealed batch's bytes and identity never change: resends after
a crash are byte-identical and the backend dedups them. A batch is deleted on PUBACK — lazily, in the next
write transaction, to save one WAL commit per batch on the flash (a crash in between only resends it).

Disk use is bounded by `max_bytes` as a whole (db + -wal + -shm + the shutdown reserve; spool_disk.Budget):
the WAL is checkpointed (PASSIVE) after a commit that takes it past its share and cut back by
journal_size_limit, and the database is held under its share by page count. With `min_free_bytes` the cap
shrinks so the file system keeps that much free; either way the oldest periodic samples go first, then the
oldest events, then the oldest sealed batches, every drop counted by reason and reported upstream.

When the disk is full, read-only, or the spool cannot be opened at all, the spool is *degraded*: records wait
in memory (spool_memory, bounded, same eviction order), are sealed there under a sid of their own and sent,
and go back to disk once it works (retried every RETRY_DISK_S, checkpointing first: on a disk the WAL
filled, no commit and so no checkpoint would come again). `trouble` says what is wrong, since when.
At close a small preallocated reserve file is given back if the disk is full, so the clean-shutdown mark and
the count of whatever could not be written still reach the disk. When even that fails (read-only or
unopenable spool, broker down) the count goes to a small fallback file instead (spool_ledger), reported by
the next start as `stop_unpersisted.*`; it also records a stop that could not write its clean mark, so the
next start does not take an orderly stop for a crash.

Only the healthy path lives here; the rest is imported on first need (issue 13: idle RSS). agent/spool_trouble.py
holds everything run only when something is wrong (trouble states, the retry, make-room and the reserve,
eviction, quarantine, batches the broker refused, a stop with records in memory); spool_memory loads when
something first goes to memory (until then `_NoMemory` stands in, empty); spool_ledger when a ledger exists at
start or one must be written. Measured with tracemalloc, the spool's modules an idle daemon holds went from
264 KiB to 189 KiB (agent.spool 164, spool_disk 25); spool_trouble is 53 KiB, spool_memory 32, spool_ledger 20
once loaded. A clean stop imports nothing: an upgrade replaces the files before the restart stops this process.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack

from . import spool_disk, wire
from .dataclass_shared import dataclass
from .errors import WireError
from .private import private_db, private_dir
from .records import Kind, Record

if TYPE_CHECKING:
    from .spool_ledger import Ledger
    from .spool_memory import MemBatch, MemoryQueue

log = logging.getLogger("icvq.spool")

ROW_OVERHEAD = 64  # bytes of SQLite row, index and page slack per stored row, for the size cap
RETRY_DISK_S = 5.0

# New spools: no AUTOINCREMENT and no priority index — each would add a WAL frame to every commit
# (measured in tools/bench/flash.py); eviction scans in id order and stops early instead.
SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY, prio INTEGER NOT NULL, boot TEXT NOT NULL,
    synced INTEGER NOT NULL, wall_ms INTEGER NOT NULL, mono_ms INTEGER NOT NULL, body BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY, created_ms INTEGER NOT NULL, n_records INTEGER NOT NULL,
    n_events INTEGER NOT NULL, payload BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS held (
    sid TEXT NOT NULL, seq INTEGER NOT NULL, created_ms INTEGER NOT NULL, n_records INTEGER NOT NULL,
    payload BLOB NOT NULL, PRIMARY KEY (sid, seq));
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
DROP INDEX IF EXISTS records_prio;
"""

# Trouble states (docs/architecture.md, "Degraded states"). All but low_headroom keep records in memory.
DISK_FULL, READ_ONLY, UNOPENABLE, IO_ERROR, LOW_HEADROOM = \
    "disk_full", "read_only", "unopenable", "io_error", "low_headroom"


@dataclass(frozen=True)
class SpoolTrouble:
    """Why the spool is not working normally (read by the health verdict, agent/health.py)."""

    state: str      # disk_full | read_only | unopenable | io_error | low_headroom
    since: float    # wall-clock seconds when this state began
    detail: str


@dataclass(frozen=True)
class EvictionDrops:
    """What one cause of eviction counts its drops as: the max_mib cap (`spool_full.*`) or the file system's
    headroom, spool.min_free_mib (`headroom.*`). One eviction path takes either."""

    records: tuple[tuple[int, str], ...]    # (prio, reason): unsealed records, evicted in this order
    batch_records: str                      # then the oldest sealed batches
    incoming: str                           # the part of one write larger than the whole cap


def _eviction_drops(metric: str, snapshot: str, event: str, batch_records: str, incoming: str) -> EvictionDrops:
    # Spools written before snapshots existed hold events at prio 1: they go with the snapshots, still after
    # every metric.
    return EvictionDrops(((0, metric), (1, snapshot), (2, event)), batch_records, incoming)


# Spelt out, not formatted from the cause: tools/catalog_scan.py reads the drop reasons from these literals and
# tests/spine/test_catalog.py holds each one declared (agent/catalog.py) and documented.
SPOOL_FULL = _eviction_drops("spool_full.metric", "spool_full.snapshot", "spool_full.event",
                             "spool_full.batch_records", "spool_full.incoming")
HEADROOM = _eviction_drops("headroom.metric", "headroom.snapshot", "headroom.event", "headroom.batch_records",
                           "headroom.incoming")


@dataclass(frozen=True)
class SealedBatch:
    seq: int        # the spool's seq; negative: a handle for a batch held in memory (spool_memory)
    payload: bytes
    n_records: int
    created_ms: int


def _body(r: Record) -> bytes:
    data = dict(r.data) if isinstance(r.data, dict) else r.data
    return msgpack.packb([int(r.kind), r.name, data, r.episode])


def _record(boot: str, synced: int, wall_ms: int, mono_ms: int, body: bytes) -> Record:
    kind, name, data, episode = msgpack.unpackb(body, raw=False, strict_map_key=False)
    return Record(Kind(kind), name, wall_ms, mono_ms, boot, bool(synced), data, episode)


def _corrupt(e: BaseException) -> bool:
    text = str(e).lower()
    return "malformed" in text or "not a database" in text


class _NoMemory:
    """The memory queue while nothing has gone to memory yet: all that a healthy spool reads of it, empty.
    Spool._memory() puts a real spool_memory.MemoryQueue in its place the first time something must be held
    there (issue 13: spool_memory is 32 KiB of Python objects an idle, healthy daemon never uses)."""

    n_records = 0
    n_batch_records = 0
    sid = 0
    records: tuple[Record, ...] = ()

    def __init__(self) -> None:
        self.batches: dict[int, MemBatch] = {}
        self.dropped_held: list[tuple[int, int]] = []

    @staticmethod
    def body_bytes() -> int:
        return 0

    @staticmethod
    def oldest_wall_ms() -> int | None:
        return None

    @staticmethod
    def take(n: int | None = None) -> list[Record]:
        return []


class Spool:
    def __init__(self, path: str | os.PathLike[str], max_bytes: int, *, memory_max_records: int = 20000,
                 max_record_bytes: int = 48 * 1024, now_ms: Callable[[], int] | None = None,
                 min_free_bytes: int = 0, ledger_path: str | os.PathLike[str] | None = None,
                 boot_id: str = "") -> None:
        self.path = Path(path)
        self.ledger_path = Path(ledger_path) if ledger_path else None
        self.boot_id = boot_id
        self._ledger: Ledger | None = None   # read at open, not yet durable elsewhere
        self._ledger_in_txn = False
        self._delivered: dict[str, int] = {}    # counters an acknowledged agent.drops record carried (memory)
        self.on_disk = str(path) != ":memory:"
        self.max_bytes = max_bytes
        self.budget = spool_disk.Budget.for_cap(max_bytes)
        self.min_free_bytes = min_free_bytes
        self.memory_max_records = memory_max_records
        self.max_record_bytes = max_record_bytes
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))
        self._db: sqlite3.Connection | None = None
        self._fs_full = False  # the headroom check saw the file system full (spool_low_headroom says so)
        self._near_cap = False  # ... or the spool near its squeezed cap
        self._mem: MemoryQueue | _NoMemory = _NoMemory()     # read freely; changed only through _memory()
        self._trouble: SpoolTrouble | None = None
        self._blocked = False                   # writes go to memory (all trouble states but low_headroom)
        self._blocked_mono = 0.0
        self._last_disk_try = 0.0
        self.last_disk_error = ""
        self._acked: set[int] = set()           # acknowledged, deleted in the next write transaction
        self._acked_held: set[tuple[int, int]] = set()
        self._held_changed = False              # held rows deleted in this transaction: recount
        self._page_size = 4096
        self._db_cap = self.budget.db_cap       # shrinks below the budget to keep min_free_bytes free
        self._wal_limit = self.budget.wal_limit  # likewise
        self._no_room = False                   # the headroom leaves nothing to write into
        self._eviction = SPOOL_FULL             # HEADROOM while min_free_bytes squeezes the cap
        self._has_reserve = False
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
        "unclean" (power cut, crash, kill -9: a quality signal in itself), "first" for a new spool, or
        "unknown" when the spool cannot be opened: then the spool runs in memory and retries."""
        self._read_ledger()
        try:
            return self._open_disk()
        except (sqlite3.Error, OSError) as e:
            from . import spool_trouble
            return spool_trouble.open_failed(self, e)

    def _open_disk(self) -> str:
        if self.on_disk:
            private_dir(self.path.parent)
            if self.path.is_dir():
                raise OSError(errno.EISDIR, "a directory is in the way of the spool file", str(self.path))
        try:
            previous = self._connect()
        except sqlite3.DatabaseError as e:
            if not _corrupt(e):
                raise
            from . import spool_trouble
            previous = spool_trouble.quarantine(self, e)
        self._after_open()
        return previous

    def _connect(self) -> str:
        if self.on_disk and not spool_disk.shm_room(self.path):
            # Not even the WAL index fits: mapping it would be a SIGBUS (spool_disk.shm_room), not an error.
            # A reserve a killed run left goes first; else memory mode (disk_full), retried every 5 s.
            if spool_disk.release_reserve(self.path):
                self._has_reserve = False
                log.warning("disk full at open: no room for the spool's WAL index; released the reserve")
            if not spool_disk.shm_room(self.path):
                raise OSError(errno.ENOSPC, "no room for the spool's WAL index", str(self.path) + "-shm")
        private_db(self.path)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute(f"PRAGMA journal_size_limit={self.budget.wal_limit}")
            db.execute("PRAGMA wal_autocheckpoint=0")    # ours: _after_commit
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: {ok}")
            db.executescript(SCHEMA)
            meta = dict(db.execute("SELECT k, v FROM meta").fetchall())
            previous = {"1": "clean", "0": "unclean"}.get(meta.get("clean", ""), "first")
            led = self._ledger
            if (previous == "unclean" and led is not None and str(led.run.get("sid")) == meta.get("sid")
                    and meta.get("ledger_seen") != led.id):
                # An orderly stop of the run that had this spool open, which could not write its clean mark
                # (read-only, I/O error) and left the ledger instead. ledger_seen: a run that saw this
                # ledger and then died before committing it did not stop cleanly.
                previous = "clean"
            if led is None:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', '0')")
            else:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', '0'), ('ledger_seen', ?)", (led.id,))
            if "sid" not in meta:
                meta["sid"] = str(secrets.randbits(63))
                meta.setdefault("next_seq", "1")
                db.execute("BEGIN IMMEDIATE")
                db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                               [("sid", meta["sid"]), ("next_seq", meta["next_seq"])])
                db.execute("COMMIT")
            self._page_size = db.execute("PRAGMA page_size").fetchone()[0]
            if self.on_disk:
                spool_disk.fill_shm(self.path)
        except BaseException:
            db.close()
            raise
        self._db = db
        self.sid = int(meta["sid"])
        if self._ledger is not None and meta.get("ledger") == self._ledger.id:
            # Committed by an earlier run that died before deleting the file: already in meta.drops.
            self.drops = self._merge(self.drops, {k: -v for k, v in self._ledger.drops.items()})
            from . import spool_ledger
            spool_ledger.remove(self.ledger_path or Path(), self._ledger)
            self._ledger = None
        self.drops = self._merge(json.loads(meta.get("drops", "{}")), self.drops)
        self._drops_dirty = self._drops_dirty or bool(self.drops)
        self._recount()
        return previous

    def _after_open(self) -> None:
        db = self._conn
        if self._ledger is not None:
            try:
                with self._txn() as tx:
                    self.drops = self._persist_drops(tx, {})
                self._drops_dirty = False
            except sqlite3.Error as e:
                log.error("could not commit the drop ledger's counts yet (%s); kept until a later commit", e)
        known = {(b.sid, b.seq) for b in self._mem.batches.values()}
        for sid, seq, created, n, payload in db.execute(
                "SELECT sid, seq, created_ms, n_records, payload FROM held ORDER BY created_ms"):
            if (int(sid), seq) not in known:
                self._memory().adopt(int(sid), seq, payload, n, created)
        if self.on_disk:
            self._has_reserve = spool_disk.make_reserve(self.path, self.budget.reserve)
            if self.max_bytes < spool_disk.MIN_DB_BYTES * 2:
                log.warning("spool.max_mib %.2f is too small to bound SQLite's files; the database needs "
                            "at least %d KiB", self.max_bytes / 2**20, spool_disk.MIN_DB_BYTES // 512)

    def _recount(self) -> None:
        db = self._conn
        n, b = db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM records").fetchone()
        nb, bb = db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM batches").fetchone()
        nh, hb = db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM held").fetchone()
        acked = list(self._acked)       # acknowledged, not yet deleted: they stopped counting at ack()
        for i in range(0, len(acked), 500):
            chunk = acked[i:i + 500]
            k, kb = db.execute(f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM batches "
                               f"WHERE seq IN ({','.join('?' * len(chunk))})", chunk).fetchone()
            nb, bb = nb - k, bb - kb
        self.n_records, self.n_batches = n, nb
        self.record_body_bytes = b
        self.bytes = b + bb + hb + (n + nb + nh) * ROW_OVERHEAD

    def close(self) -> None:
        """Persist what memory holds (or count it), mark a clean stop, release the database."""
        if self._db is None and self.on_disk:
            with contextlib.suppress(sqlite3.Error, OSError):
                self._open_disk()
        if self._db is None:
            self._give_up_memory("the spool cannot be opened")
            return
        if self._blocked or self._mem.n_records or self._unpersisted_batches():
            from . import spool_trouble
            spool_trouble.final_flush(self)
        else:
            try:
                with self._txn() as db:
                    self._apply_acks(db)
                    self._persist_drops(db, {})
                    db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', '1')")
            except sqlite3.Error as e:
                log.error("could not mark the spool's clean stop: %s", e)
                self._give_up_memory(f"the spool cannot be written ({e})")   # the mark and any counts: ledger
        with contextlib.suppress(sqlite3.Error):
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._conn.close()
        self._db = None

    def _give_up_memory(self, why: str) -> None:
        from . import spool_trouble
        spool_trouble.give_up_memory(self, why)

    def _read_ledger(self) -> None:
        if self.ledger_path is None or self._ledger is not None:
            return
        try:
            os.stat(self.ledger_path)
        except FileNotFoundError:   # the usual start: spool_ledger is imported only when there is one to read
            return
        except OSError:
            pass                    # spool_ledger.read says what is wrong
        from . import spool_ledger
        led = spool_ledger.read(self.ledger_path)
        if led is None:
            return
        self._ledger = led
        self._count_drops(led.drops)
        log.warning("drop ledger %s from an earlier stop (%s): %s; reporting it", self.ledger_path,
                    json.dumps(led.run, sort_keys=True), json.dumps(led.drops, sort_keys=True))

    def _ledger_carried(self, carried: bool) -> None:
        """A commit of meta.drops (with the ledger's id) or a delivered memory batch with the counts in it."""
        if carried and self._ledger is not None and self.ledger_path is not None:
            from . import spool_ledger
            spool_ledger.remove(self.ledger_path, self._ledger)
            self._ledger = None

    def _memory(self) -> MemoryQueue:
        """The memory queue, to put something in it (spool_memory is imported then, not at start)."""
        mem = self._mem
        if isinstance(mem, _NoMemory):
            from .spool_memory import MemoryQueue
            mem = self._mem = MemoryQueue(self.memory_max_records)
        return mem

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("spool is not open")
        return self._db

    # ---------------------------------------------------------------------------------------- trouble
    @property
    def trouble(self) -> SpoolTrouble | None:
        """None when the spool works normally; set whenever it is degraded (read by agent/health.py)."""
        return self._trouble

    @property
    def degraded(self) -> bool:
        """Records are held in memory because the spool cannot be written."""
        return self._blocked

    @property
    def memory_records(self) -> int:
        """Records waiting in memory while the spool cannot be written (unsealed and in memory batches)."""
        return self._mem.n_records + self._mem.n_batch_records

    @property
    def n_unsealed(self) -> int:
        """Records seal() can take now: the memory queue's while degraded (records on disk wait for the disk),
        the spool's otherwise. What the pipeline's sealing pace must look at, not n_records."""
        return self._mem.n_records if self._seal_from_memory else self.n_records

    @property
    def _seal_from_memory(self) -> bool:
        """Seal from the memory queue: while degraded (records on disk wait for the disk), or when only memory
        holds unsealed records (written back after recovery once the disk is drained)."""
        return self._blocked or (not self.n_records and bool(self._mem.n_records))

    @property
    def cap_bytes(self) -> int:
        """What the database may hold now: its share of max_bytes, less if the headroom squeezes it."""
        return self._db_cap

    @property
    def memory_batches(self) -> int:
        return len(self._mem.batches)

    def _fail(self, e: BaseException) -> None:
        from . import spool_trouble
        spool_trouble.fail(self, e)

    # ------------------------------------------------------------------------------------------ write
    def put(self, records: Iterable[Record]) -> None:
        """Accept records durably (one transaction), or into the bounded memory queue when the disk fails."""
        incoming: list[Record] = []
        bodies: list[bytes] = []          # encoded once: the size check here, the chunking and the rows reuse them
        for r in records:
            try:
                wire.check_record(r)
                body = _body(r)
            except (WireError, TypeError, ValueError, OverflowError):
                self._count_drop("invalid", 1)
                continue
            if len(body) > self.max_record_bytes:
                self._count_drop("oversize", 1)
            else:
                incoming.append(r)
                bodies.append(body)
        if self._blocked:
            self._count_drops(self._memory().add(incoming))
            if time.monotonic() - self._last_disk_try >= RETRY_DISK_S:
                self.retry_disk()
            return
        if self._mem.n_records:           # e.g. records an unseal put back: keep them ahead of the new ones
            waiting = self._mem.take()
            incoming, bodies = waiting + incoming, [_body(r) for r in waiting] + bodies
        if incoming or self._acked or self._acked_held or self._unpersisted_batches():
            self._write_all(incoming, bodies)

    def retry_disk(self) -> bool:
        """Try to write what memory holds to disk again (reopening if needed); True if writable now."""
        from . import spool_trouble
        return spool_trouble.retry_disk(self)

    def _make_room(self) -> bool:
        from . import spool_trouble
        return spool_trouble.make_room(self)

    def _write_all(self, records: list[Record], bodies: list[bytes] | None = None) -> bool:
        """Write records in chunks (each one transaction small enough for the WAL budget); on a disk
        error the rest goes back to memory and the spool is degraded. True if everything was written.
        `bodies`: the records' row bytes when the caller has them (put() encodes to check the size)."""
        if self._headroom_blocks():
            self._count_drops(self._memory().add(records, front=True))
            return False
        if bodies is None:      # records that waited in memory; encoded only now that they may be written
            bodies = [_body(r) for r in records]
        chunk_bytes = max(4096, self._wal_limit // 4)   # the squeezed WAL's share: one chunk, one transaction
        i = 0
        first = True
        while first or i < len(records):
            j, size = i, 0
            while j < len(records) and (j == i or size < chunk_bytes):
                size += len(bodies[j]) + ROW_OVERHEAD
                j += 1
            try:
                self._write_chunk(records[i:j], bodies[i:j], {}, persist_held=first)
            except sqlite3.Error as e:
                self._count_drops(self._memory().add(records[i:], front=True))
                self._fail(e)
                return False
            first = False
            i = j
        return True

    def _write_chunk(self, records: Sequence[Record], bodies: Sequence[bytes], tally: dict[str, int], *,
                     persist_held: bool = False) -> None:
        rows = [(r.priority, r.boot, int(r.synced), r.wall_ms, r.mono_ms, body)
                for r, body in zip(records, bodies, strict=True)]
        need = sum(len(b) + ROW_OVERHEAD for *_, b in rows)
        held = self._unpersisted_batches() if persist_held else []
        with self._txn() as db:
            self._apply_acks(db)
            cap = self._db_cap
            dropped = self._room_for(db, min(need, cap) + sum(len(b.payload) + ROW_OVERHEAD for b in held))
            if held:
                self._insert_held(db, held)
            if self.bytes + need > cap:
                dropped = self._merge(dropped, self._evict(self.bytes + need - cap, self._eviction))
            if need > cap:
                # A single put larger than the whole spool: keep the newest that fit.
                keep, size = [], 0
                for row in reversed(rows):
                    size += len(row[-1]) + ROW_OVERHEAD
                    if size > cap:
                        break
                    keep.append(row)
                reason = self._eviction.incoming
                dropped[reason] = dropped.get(reason, 0) + len(rows) - len(keep)
                rows = keep[::-1]
            db.executemany("INSERT INTO records (prio, boot, synced, wall_ms, mono_ms, body) "
                           "VALUES (?, ?, ?, ?, ?, ?)", rows)
            dropped = self._merge(dropped, self._fit_pages(db))
            merged = self._merge(dropped, tally)
            pending = self._persist_drops(db, merged) if merged or self._drops_dirty else self.drops
        for b in held:
            b.persisted = True
        self.drops = pending
        self._drops_dirty = False
        if dropped or held or self._held_changed:
            self._recount()
        else:
            # Counting the tables costs a scan of every row: at a day's backlog (~100k records) that would
            # be tens of ms per commit, so the common case adds what it wrote.
            body = sum(len(row[-1]) for row in rows)
            self.n_records += len(rows)
            self.record_body_bytes += body
            self.bytes += body + len(rows) * ROW_OVERHEAD
        self._held_changed = False
        self._after_commit()

    def _room_for(self, db: sqlite3.Connection, need: int) -> dict[str, int]:
        """Evict before inserting `need` bytes until the pages they take fit under the cap, free pages of the file
        first. _fit_pages alone evicts after the insert: an insert that found no free page had grown the file
        by then, and the squeezed cap follows the file (its pages cost nothing more). On a partition the spool
        fills itself (max_mib 64, min_free_mib 0) the file crept 2-5 pages per eviction round until the file
        system was full and the WAL held pages beyond the file's end: no checkpoint could write them, and the
        spool stayed degraded with its records on disk, the broker up (1.5 MiB tmpfs, 2,269 records stuck)."""
        ps = self._page_size
        want = need * 5 // 4 // ps + 4      # row bytes to pages: B-tree slack, a split, overflow tails
        dropped: dict[str, int] = {}
        for _ in range(8):
            count = db.execute("PRAGMA page_count").fetchone()[0]
            free = db.execute("PRAGMA freelist_count").fetchone()[0]
            # Pages the file would grow by, less what the cap still allows. Eviction frees pages, it never
            # shrinks the file: a file already past the cap only must not grow further.
            short = max(0, want - free) - max(0, self._db_cap // ps - count)
            if short <= 0:
                break
            more = self._evict(short * ps, self._eviction)
            if not more:
                break
            dropped = self._merge(dropped, more)
        return dropped

    def _fit_pages(self, db: sqlite3.Connection) -> dict[str, int]:
        """Evict until the database's used pages fit its share of the cap: the real B-tree cost."""
        dropped: dict[str, int] = {}
        for _ in range(8):
            used = (db.execute("PRAGMA page_count").fetchone()[0]
                    - db.execute("PRAGMA freelist_count").fetchone()[0]) * self._page_size
            if used <= self._db_cap:
                break
            more = self._evict(used - self._db_cap, self._eviction)
            if not more:
                break
            dropped = self._merge(dropped, more)
        return dropped

    def _after_commit(self) -> None:
        """Checkpoint policy: PASSIVE once the WAL outgrows its share (journal_size_limit then cuts the file
        back when the next transaction restarts the log). No auto_vacuum: its pointer-map pages cost ~0.2 WAL
        frames per commit (measured), and the file never needs to shrink to honour the cap or the headroom —
        it only must not grow, and freed pages are reused first."""
        if not self.on_disk:
            return
        try:
            wal = Path(str(self.path) + "-wal").stat().st_size
        except OSError:
            wal = 0
        try:
            if wal > self._wal_limit:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as e:
            from . import spool_trouble
            spool_trouble.checkpoint_failed(self, e)

    def _headroom_blocks(self) -> bool:
        """Recompute the cap from the file system's free space; True if it leaves no room to write at all.
        Also with min_free_bytes = 0: a cap larger than the partition once let the spool fill the disk with
        an uncheckpointed WAL (its share of the cap being larger than the disk), and then nothing, not even
        the checkpoint, could be written: the records on disk never left although the broker was back."""
        if not self.on_disk:
            return False
        free = spool_disk.free_bytes(self.path.parent)
        if free is None:
            return False
        mine = spool_disk.disk_bytes(self.path)
        allowed = min(self.max_bytes, mine + free - self.min_free_bytes)
        squeezed = allowed < self.max_bytes
        # A reserve given back (spool_trouble.make_room) is not on the disk: counting it would leave the database
        # no room.
        reserve = self.budget.reserve if self._has_reserve else 0
        eff = spool_disk.Budget.for_cap(allowed, reserve) if squeezed else self.budget
        # Pages the database file already has cost the file system nothing more: evicting below them would
        # throw data away for no free byte (the file does not shrink). The squeeze stops growth instead.
        try:
            held_by_file = self.path.stat().st_size
        except OSError:
            held_by_file = 0
        self._db_cap = min(self.budget.db_cap, max(eff.db_cap, held_by_file))
        if eff.wal_limit != self._wal_limit:
            self._wal_limit = eff.wal_limit
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute(f"PRAGMA journal_size_limit={eff.wal_limit}").fetchall()
        self._eviction = HEADROOM if squeezed else SPOOL_FULL
        detail = (f"{free / 2**20:.1f} MiB free on the file system, keeping {self.min_free_bytes / 2**20:.1f} MiB: "
                  f"spool cap cut to {max(self._db_cap, 0) / 2**20:.2f} MiB")
        self._no_room = self._db_cap < spool_disk.MIN_DB_BYTES
        if self._no_room:
            # No useful room at all: for the records it is a full disk (held in memory, at risk), and the
            # verdict must say so; the detail names the headroom.
            from . import spool_trouble
            spool_trouble.block(self, DISK_FULL, f"no room left above the headroom: {detail}")
            return True
        # A full file system with room left inside the spool's own file: writes go on (evicting by priority
        # once that room is used), but the files cannot grow by even one commit, so say it now, not when a
        # write fails (which depends on how much of the WAL happens to be reusable).
        # Said below 16 pages free, unsaid above 256: a checkpoint that truncates the WAL frees a little and
        # must not make the reason flap.
        if not self._has_reserve and free - eff.wal_limit * 2 - spool_disk.SHM_BYTES > self.budget.reserve:
            # Given back on a full disk (spool_trouble.make_room, or at start): taken again only with room beside it for
            # the WAL's share, or it would take back what the spool needs to drain.
            self._has_reserve = spool_disk.make_reserve(self.path, self.budget.reserve)
            free = spool_disk.free_bytes(self.path.parent) or 0
        fs_full = free < (256 if self._fs_full else 16) * self._page_size
        self._fs_full = fs_full
        # Said above 90 % of the squeezed cap, unsaid below 75 %: an eviction takes it to ~86 %, and a bare 90 %
        # logged 'low headroom' and 'restored' every few commits (1.5 MiB partition, max_mib 64).
        near_cap = squeezed and self.bytes + 4 * self._page_size > self._db_cap * (0.75 if self._near_cap else 0.9)
        self._near_cap = near_cap
        if fs_full and not near_cap:
            detail = (f"file system full ({free // 1024} KiB free): the spool reuses its own "
                      f"{held_by_file / 2**20:.2f} MiB file and cannot grow")
        if self._blocked:
            pass    # disk full, read-only...: said already; low headroom in its place flipped it back every retry
        elif fs_full or near_cap:
            from . import spool_trouble
            spool_trouble.set_trouble(self, LOW_HEADROOM, detail)
        elif self._trouble is not None and self._trouble.state == LOW_HEADROOM:
            log.warning("spool headroom restored: %s", detail)
            self._trouble = None
        return False

    def _unpersisted_batches(self) -> list[Any]:
        if self._db is None:
            return []
        return [b for b in self._mem.batches.values() if not b.persisted]

    def _insert_held(self, db: sqlite3.Connection, batches: Iterable[Any]) -> None:
        db.executemany("INSERT OR IGNORE INTO held VALUES (?, ?, ?, ?, ?)",
                       [(str(b.sid), b.seq, b.created_ms, b.n_records, b.payload) for b in batches])

    def _apply_acks(self, db: sqlite3.Connection) -> None:
        if self._acked:
            seqs = list(self._acked)
            for i in range(0, len(seqs), 500):
                chunk = seqs[i:i + 500]
                db.execute(f"DELETE FROM batches WHERE seq IN ({','.join('?' * len(chunk))})", chunk)
            self._acked.clear()
        if self._acked_held:
            self._held_changed = True
            db.executemany("DELETE FROM held WHERE sid = ? AND seq = ?",
                           [(str(sid), seq) for sid, seq in self._acked_held])
            self._acked_held.clear()

    def _rollback(self) -> None:
        try:
            self._conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    @contextlib.contextmanager
    def _txn(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed whole, or rolled back whole (then acks stay pending)."""
        db = self._conn
        acked, acked_held = set(self._acked), set(self._acked_held)
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            self._ledger_in_txn = False
            self._rollback()
            self._acked |= acked
            self._acked_held |= acked_held
            # An eviction inside took its estimate off self.bytes; the rollback put the rows back (a full disk
            # failing every write after one: `icvq status` showed the spool at -10.7 KiB).
            with contextlib.suppress(sqlite3.Error):
                self._recount()
            raise
        carried, self._ledger_in_txn = self._ledger_in_txn, False
        self._ledger_carried(carried)

    def _persist_drops(self, db: sqlite3.Connection, dropped: dict[str, int]) -> dict[str, int]:
        drops = self._merge(self.drops, dropped)
        db.execute("INSERT OR REPLACE INTO meta VALUES ('drops', ?)", (json.dumps(drops),))
        if self._ledger is not None:
            db.execute("INSERT OR REPLACE INTO meta VALUES ('ledger', ?)", (self._ledger.id,))
            self._ledger_in_txn = True
        return drops

    def _evict(self, excess: int, why: EvictionDrops) -> dict[str, int]:
        from . import spool_trouble
        return spool_trouble.evict(self, excess, why)

    @staticmethod
    def _merge(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
        out = dict(a)
        for k, v in b.items():
            if v:
                out[k] = out.get(k, 0) + v
                if out[k] == 0:   # deltas may be negative (a shutdown tally taken back); counts never are
                    del out[k]
        return out

    def _count_drop(self, reason: str, n: int) -> None:
        if n:
            self.drops = self._merge(self.drops, {reason: n})
            self._drops_dirty = True

    def _count_drops(self, dropped: dict[str, int]) -> None:
        for k, v in dropped.items():
            self._count_drop(k, v)
        while self._mem.dropped_held:     # memory batches the bound dropped that also sit in `held`
            self._acked_held.add(self._mem.dropped_held.pop())

    # ----------------------------------------------------------------------------------------- batches
    def unsealed_summary(self) -> tuple[int, int]:
        """(records, body bytes) waiting to be sealed, asked on every step: O(1) from the tracked totals (the
        memory queue, only while degraded, sums its records). Only the memory queue counts while degraded."""
        if self._seal_from_memory:
            return self._mem.n_records, self._mem.body_bytes()
        return self.n_records, self.record_body_bytes

    def seal(self, make_id: Callable[[str, int], wire.BatchId], max_bytes: int, *,
             max_records: int = 5000, compress: str = "auto") -> SealedBatch | None:
        """Move the oldest unsealed records (one boot, one sync state) into a new batch of ≤ max_bytes."""
        if self._seal_from_memory:
            b, oversize = self._memory().seal(make_id, max_bytes, max_records=max_records, compress=compress,
                                         avoid_sid=self.sid)
            self._count_drop("oversize", oversize)
            return SealedBatch(b.handle, b.payload, b.n_records, b.created_ms) if b else None
        try:
            return self._seal_disk(make_id, max_bytes, max_records, compress)
        except sqlite3.Error as e:
            self._fail(e)
            return None

    def _seal_disk(self, make_id: Callable[[str, int], wire.BatchId], max_bytes: int, max_records: int,
                   compress: str) -> SealedBatch | None:
        db = self._conn
        rows = db.execute("SELECT id, boot, synced, wall_ms, mono_ms, body FROM records ORDER BY id LIMIT ?",
                          (max_records,)).fetchall()
        if not rows:
            return None
        boot, synced = rows[0][1], rows[0][2]
        # One seal is one transaction: its WAL frames are the payload plus every page its deleted rows sat on.
        # Under a small cap that must stay within the WAL's share (spool_disk.Budget: 1.5 W or W + 64 KiB, W
        # ahead of a checkpoint): rows worth a quarter of W per batch. max_mib 0.25 with 96 KiB batches
        # reached 1.27x the cap while draining; at the default cap (W = 4 MiB) this never binds.
        raw_limit = max(self._wal_limit // 4, 4096)
        budget = raw = 0
        take: list[Any] = []
        for row in rows:
            budget += len(row[5]) + 6
            raw += len(row[5]) + ROW_OVERHEAD
            if row[1] != boot or row[2] != synced or (take and (budget > max_bytes or raw > raw_limit)):
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
            from . import spool_trouble
            spool_trouble.drop_rows(self, [take[0][0]], "oversize")
            return self._seal_disk(make_id, max_bytes, max_records, compress)
        n_events = sum(1 for r in records if not r.kind.evictable_first)
        ids = [row[0] for row in take]
        with self._txn():
            self._apply_acks(db)
            # Rows out first: the batch then takes the pages they leave, and does not grow a file at its cap.
            for i in range(0, len(ids), 500):
                chunk = ids[i:i + 500]
                db.execute(f"DELETE FROM records WHERE id IN ({','.join('?' * len(chunk))})", chunk)
            db.execute("INSERT INTO batches VALUES (?, ?, ?, ?, ?)",
                       (seq, self._now_ms(), len(records), n_events, payload))
            db.execute("UPDATE meta SET v = ? WHERE k = 'next_seq'", (str(seq + 1),))
        if self._held_changed:
            self._recount()
            self._held_changed = False
        else:
            body = sum(len(row[5]) for row in take)
            self.n_records -= len(take)
            self.n_batches += 1
            self.record_body_bytes -= body
            self.bytes += len(payload) + ROW_OVERHEAD - body - len(take) * ROW_OVERHEAD
        self._after_commit()
        return SealedBatch(seq, payload, len(records), self._now_ms())

    def unseal(self, seq: int) -> None:
        """Put a sealed batch's records back in the queue (the broker refused its size); they are sealed
        again, smaller, under new sequence numbers. Safe because the broker never accepted the old one."""
        from . import spool_trouble
        spool_trouble.unseal(self, seq)

    def drop_batch(self, seq: int, reason: str) -> None:
        """Drop a sealed batch the broker rejected, counted as `reason`."""
        from . import spool_trouble
        spool_trouble.drop_batch(self, seq, reason)

    def sealed(self, exclude: Iterable[int] = (), limit: int = 100) -> list[SealedBatch]:
        """Sealed batches not yet acknowledged, oldest first, skipping those already in flight. Batches
        held in memory come first: they are the ones a power cut would take."""
        if limit <= 0:
            return []
        skip = set(exclude)
        out = [SealedBatch(b.handle, b.payload, b.n_records, b.created_ms)
               for b in list(self._mem.batches.values()) if b.handle not in skip][:limit]
        if not self.n_batches or self._db is None or len(out) >= limit:
            return out
        skip |= self._acked
        # Sequence numbers first: payloads are read only for the batches about to be sent.
        want = [seq for (seq,) in self._conn.execute("SELECT seq FROM batches ORDER BY seq") if seq not in skip]
        for seq in want[:limit - len(out)]:
            row = self._conn.execute("SELECT created_ms, n_records, payload FROM batches WHERE seq = ?",
                                     (seq,)).fetchone()
            if row is not None:
                out.append(SealedBatch(seq, row[2], row[1], row[0]))
        return out

    def ack(self, seqs: Iterable[int]) -> int:
        """Forget acknowledged batches. Memory ones at once; the spool's are deleted in the next write
        transaction (or at close), which saves a commit per batch; they stop counting now."""
        n = 0
        disk = []
        for seq in seqs:
            if seq < 0:
                b = self._mem.batches.pop(seq, None)
                if b is not None:
                    n += 1
                    if b.drops is not None:      # these counters reached the broker
                        self._delivered = {k: max(int(v), self._delivered.get(k, 0)) for k, v in b.drops.items()}
                        self._ledger_carried(True)
                    if b.persisted:
                        self._acked_held.add((b.sid, b.seq))
            elif seq not in self._acked:
                disk.append(seq)
        if disk and self._db is not None:
            found = self._conn.execute(f"SELECT seq, LENGTH(payload) FROM batches "
                                       f"WHERE seq IN ({','.join('?' * len(disk))})", disk).fetchall()
            for seq, size in found:
                self._acked.add(seq)
                self.n_batches -= 1
                self.bytes -= size + ROW_OVERHEAD
            n += len(found)
        return n

    # ------------------------------------------------------------------------------------------ views
    def disk_bytes(self) -> int:
        return spool_disk.disk_bytes(self.path) if self.on_disk else 0

    def stats(self) -> dict[str, Any]:
        oldest = None
        if self._db is not None:
            # Oldest by insertion order: O(1) on the primary keys, cheap enough for every `icvq status`.
            a = self._db.execute("SELECT wall_ms FROM records ORDER BY id LIMIT 1").fetchone()
            # Acknowledged batches wait for the next write transaction to be deleted: not "oldest 0s" on an empty
            # spool in `icvq status`.
            b = next(((created,) for seq, created in self._db.execute(
                "SELECT seq, created_ms FROM batches ORDER BY seq LIMIT ?", (len(self._acked) + 1,))
                if seq not in self._acked), None)
            cands = [x[0] for x in (a, b) if x is not None]
            oldest = min(cands) if cands else None
        # Records held in memory (the disk full, read-only or unopenable) wait too: `icvq flush --wait` must not
        # read a spool whose disk part is empty as drained while the broker has none of them.
        mem = self._mem.oldest_wall_ms()
        if mem is not None:
            oldest = mem if oldest is None else min(oldest, mem)
        t = self._trouble
        return {"path": str(self.path), "records": self.n_records, "batches": self.n_batches,
                "bytes": self.bytes, "max_bytes": self.max_bytes, "oldest_wall_ms": oldest,
                "disk_bytes": self.disk_bytes(), "cap_bytes": self._db_cap,
                "memory_records": self.memory_records, "memory_batches": self.memory_batches,
                "degraded": self.degraded, "last_disk_error": self.last_disk_error,
                "trouble": None if t is None else {"state": t.state, "since": t.since, "detail": t.detail},
                "drops": dict(self.drops), "sid": self.sid}
