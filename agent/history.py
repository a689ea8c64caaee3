"""The local event history behind `icvq events`: what happened on this car, kept after upload.

Its own SQLite file (`[history] path`), separate from the spool so the spool's size cap, eviction and
fsync policy stay untouched. Only events and episode begin/end are kept, never metrics or health: a few
rows a minute on a normal day. The pipeline calls the History object as an observer with each committed
group, so there is one small transaction per spool commit and none at all for metric-only groups.

History is a convenience, not the data path: synchronous=NORMAL (a power cut may lose the last rows, never
corrupt the file), and every write failure is counted and logged once, never raised into the pipeline.
Pruned by age (max_days) and size (max_mib); either limit at 0 turns the history off. Reading (`icvq events`,
the status's summary) lives in agent/history_query.py, reached through this module's names on first use: the
idle daemon only writes (issue 13: idle RSS).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import lazy, spool_disk
from .config import HistoryConfig
from .private import private_db, private_dir
from .records import Kind, Record

if TYPE_CHECKING:
    from .history_query import Query as Query
    from .history_query import open_ro as open_ro
    from .history_query import query as query
    from .history_query import query_file as query_file
    from .history_query import summary as summary

log = logging.getLogger("icvq.history")

KEPT = frozenset({Kind.EVENT, Kind.BEGIN, Kind.END})
PRUNE_EVERY_S = 600.0  # age; the size cap is checked after every write (three PRAGMAs: cheap)
RETRY_S = 60.0
# A connection left open holds ~120 KiB (SQLite's schema and page cache; issue 13: idle RSS) for a write that
# comes a few times a minute at most: one after a quiet minute closes it again at once, a burst keeps it open
# until a minute passes without a write (idle_close(), from the daemon's trim turn). Reopening costs ~1 ms.
IDLE_CLOSE_S = 60.0
MAX_QUERY = 5000

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, wall_ms INTEGER NOT NULL, mono_ms INTEGER NOT NULL,
    boot TEXT NOT NULL, synced INTEGER NOT NULL, kind INTEGER NOT NULL, name TEXT NOT NULL,
    episode INTEGER, data TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_wall ON events (wall_ms);
"""


def _jsonable(v: Any) -> Any:
    return v.hex() if isinstance(v, (bytes, bytearray)) else repr(v)  # bytes as hex, like wire.record_json


def enabled(cfg: HistoryConfig) -> bool:
    return cfg.max_days > 0 and cfg.max_mib > 0


class History:
    """Writer side, owned by the daemon; `__call__` runs on the pipeline thread."""

    def __init__(self, cfg: HistoryConfig, now_ms: Any = None) -> None:
        self.cfg = cfg
        self.path = Path(cfg.path)
        self.max_bytes = int(cfg.max_mib * 2**20)
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._last_prune = 0.0
        self._failed_at = 0.0
        self._last_write = float("-inf")
        self.last_error = ""
        self.written = 0
        self.errors = 0

    def open(self) -> None:
        with self._lock:
            self._open_locked()

    def _open_locked(self, prune: bool = True) -> None:
        private_dir(self.path.parent)
        try:
            self._connect()
        except sqlite3.DatabaseError as e:
            if "malformed" not in str(e) and "not a database" not in str(e):
                raise
            # Only a convenience copy: keep the evidence, start afresh rather than go without history.
            aside = f"{self.path}.corrupt-{int(time.time())}"
            log.error("history %s is corrupt (%s); moved aside to %s", self.path, e, aside)
            for suffix in ("", "-wal", "-shm"):
                if Path(f"{self.path}{suffix}").exists():
                    Path(f"{self.path}{suffix}").rename(f"{aside}{suffix}")
            self._connect()
        if prune:
            self._prune_locked()

    def _connect(self) -> None:
        if not spool_disk.shm_room(self.path):
            # Mapping the WAL index on a full 1 KiB-block file system is a SIGBUS, not an error (spool_disk).
            raise sqlite3.OperationalError("database or disk is full: no room for the WAL index")
        private_db(self.path)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=2.0)
        try:
            # Must precede the first table so freed pages can be handed back to the filesystem after pruning.
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA journal_size_limit=1048576")
            db.executescript(SCHEMA)
            spool_disk.fill_shm(self.path)
        except BaseException:
            db.close()
            raise
        self._db = db

    def idle_close(self) -> None:
        """Close the connection after a minute without writes; the next write reopens it."""
        with self._lock:
            if self._db is not None and time.monotonic() - self._last_write >= IDLE_CLOSE_S:
                self._close_locked()

    def _close_locked(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(sqlite3.Error):
                db.close()

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                try:
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error:
                    pass
                self._db.close()
                self._db = None

    def __call__(self, records: list[Record]) -> None:
        rows = [(r.wall_ms, r.mono_ms, r.boot, int(r.synced), int(r.kind), r.name, r.episode,
                 json.dumps(r.data, separators=(",", ":"), default=_jsonable)) for r in records if r.kind in KEPT]
        if not rows:
            return
        with self._lock:
            if self._db is None and not self._reopen():
                return
            try:
                self._write(rows)
            except sqlite3.Error as e:
                self._fail(e)
                return
            now = time.monotonic()
            quiet = now - self._last_write >= IDLE_CLOSE_S
            self._last_write = now
            if quiet:
                self._close_locked()

    def _write(self, rows: list[tuple[Any, ...]]) -> None:
        db = self._conn
        db.execute("BEGIN")
        try:
            db.executemany("INSERT INTO events (wall_ms, mono_ms, boot, synced, kind, name, episode, data) "
                           "VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            db.execute("COMMIT")
        except BaseException:
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        self.written += len(rows)
        if self.last_error:
            log.info("history writable again")
            self.last_error = ""
        if time.monotonic() - self._last_prune >= PRUNE_EVERY_S or self.used_bytes() > self.max_bytes:
            self._prune_locked()

    def _fail(self, e: sqlite3.Error) -> None:
        self.errors += 1
        msg = f"{type(e).__name__}: {e}"
        if msg != self.last_error:
            log.warning("history write failed (%s); events still go to the spool", msg)
        self.last_error = msg
        self._failed_at = time.monotonic()
        self._close_locked()

    def _reopen(self) -> bool:
        if time.monotonic() - self._failed_at < RETRY_S:
            return False
        try:
            self._open_locked(prune=False)   # pruning is due by its own timer (_write), not at each reopen
            return True
        except (sqlite3.Error, OSError) as e:
            self._fail(sqlite3.OperationalError(str(e)))
            return False

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.OperationalError("history is not open")
        return self._db

    # --------------------------------------------------------------------------------------- pruning
    def prune(self) -> None:
        with self._lock:
            if self._db is None and not self._reopen():
                return
            try:
                self._prune_locked()
            except sqlite3.Error as e:
                self._fail(e)

    def used_bytes(self) -> int:
        db = self._conn
        page = db.execute("PRAGMA page_size").fetchone()[0]
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * page)

    def _prune_locked(self) -> None:
        db = self._conn
        self._last_prune = time.monotonic()
        cutoff = self._now_ms() - int(self.cfg.max_days * 86400_000)
        n = db.execute("DELETE FROM events WHERE wall_ms < ?", (cutoff,)).rowcount
        # Over the size cap: drop the oldest tenth at a time down to 90 %, so we do not prune on every commit.
        while self.used_bytes() > self.max_bytes * 0.9:
            total = db.execute("SELECT COUNT(*) FROM events").fetchone()[0]
            if not total:
                break
            chunk = max(50, total // 10)
            n += db.execute("DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?)",
                            (chunk,)).rowcount
        if n:
            db.execute("PRAGMA incremental_vacuum")
            log.debug("history pruned %d rows", n)

    def stats(self) -> dict[str, Any]:
        return {"path": str(self.path), "written": self.written, "errors": self.errors,
                "last_error": self.last_error}


_READING = frozenset({"Query", "open_ro", "query", "query_file", "summary"})


# `history.query_file` and the other reading names, from agent/history_query.py on first use (PEP 562).
__getattr__ = lazy.forward(__name__, "history_query", _READING)
