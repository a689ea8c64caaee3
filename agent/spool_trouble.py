"""What the spool runs only when something is wrong: disk trouble, a corrupt file, eviction, refused batches.

The friend module of agent/spool.py: functions over a `Spool` (its private state included), split out because
an idle, healthy daemon never runs them, and imported by the spool on first need (issue 13: idle RSS; 53 KiB of
Python objects once loaded, measured with tracemalloc, that agent.spool no longer holds from the start). No
threads; called on the pipeline thread like the rest of the spool (at stop only by a degraded close()).
It owns:

- the trouble states (`block`, `set_trouble`, `unblock`, `fail`, `classify`, `read_only_fs`): the spool's
  opening explains what they mean for the records;
- the way back (`retry_disk`, every RETRY_DISK_S while degraded; `make_room`, `give_back_reserve`);
- an open that fails (`open_failed`) and a corrupt spool moved aside (`quarantine`, `count_lost`);
- eviction at the cap or the headroom (`evict`), and a record no batch can carry (`drop_rows`);
- batches the broker refused (`unseal`, `drop_batch`);
- a stop with records still in memory (`final_flush`, `give_up_memory`, which writes the drop ledger).

A late import that failed on a car would surface only when the trouble came: tests/spine/test_lazy_imports.py
runs each of these paths in a fresh interpreter.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING

from . import spool_disk, wire
from .spool import DISK_FULL, IO_ERROR, LOW_HEADROOM, READ_ONLY, ROW_OVERHEAD, UNOPENABLE, SpoolTrouble, _body

if TYPE_CHECKING:
    from .spool import EvictionDrops, Spool

log = logging.getLogger("icvq.spool")


def classify(e: BaseException) -> str:
    if isinstance(e, OSError):
        if e.errno == errno.ENOSPC:
            return DISK_FULL
        if e.errno == errno.EROFS:
            return READ_ONLY
        return UNOPENABLE
    text = str(e).lower()
    if "full" in text:
        return DISK_FULL
    if "readonly" in text or "read-only" in text:
        return READ_ONLY
    return IO_ERROR


def set_trouble(sp: Spool, state: str, detail: str) -> None:
    if sp._trouble is None or sp._trouble.state != state:
        sp._trouble = SpoolTrouble(state, time.time(), detail)
        log.error("spool %s: %s; %s", state.replace("_", " "), detail,
                  f"holding up to {sp.memory_max_records} records in memory" if sp._blocked
                  else "keeping the file system's headroom by a smaller cap")
    elif detail != sp._trouble.detail:
        sp._trouble = SpoolTrouble(state, sp._trouble.since, detail)


def block(sp: Spool, state: str, detail: str) -> None:
    if not sp._blocked:
        sp._blocked = True
        sp._blocked_mono = time.monotonic()
    sp._last_disk_try = time.monotonic()
    sp.last_disk_error = detail
    set_trouble(sp, state, detail)


def fail(sp: Spool, e: BaseException) -> None:
    state = classify(e)
    if state == IO_ERROR and read_only_fs(sp):
        state = READ_ONLY
    block(sp, state, f"{type(e).__name__}: {e}")


def unblock(sp: Spool, written: int) -> None:
    if sp._blocked:
        log.warning("spool writable again after %.0f s (%s); %d records written from memory",
                    time.monotonic() - sp._blocked_mono, sp._trouble.state if sp._trouble else "?",
                    written)
    sp._blocked = False
    sp.last_disk_error = ""
    sp._trouble = None


def read_only_fs(sp: Spool) -> bool:
    """Is the spool's file system read-only? SQLite says only "disk I/O error" (SQLITE_IOERR_WRITE) when
    ext4 went read-only after an error (errors=remount-ro), and on recent kernels that emergency state
    does not show in statvfs either; setting the spool file's times to what they are does fail with EROFS
    there, and changes nothing visible elsewhere. Asked only after an I/O error."""
    try:
        if os.statvfs(sp.path.parent).f_flag & os.ST_RDONLY:
            return True
        st = os.stat(sp.path)
        os.utime(sp.path, ns=(st.st_atime_ns, st.st_mtime_ns))
    except OSError as e:
        return e.errno == errno.EROFS
    return False


def open_failed(sp: Spool, e: sqlite3.Error | OSError) -> str:
    """open() could not open the spool: "unknown", and the spool runs in memory and retries."""
    if classify(e) == DISK_FULL and sp.on_disk and spool_disk.release_reserve(sp.path):
        # A run killed on a full disk leaves its reserve behind: give it back so this open can write
        # (then the spool is open, previous runs' records and counts with it, and the stop can use
        # the reserve again). Without this the spool stayed unopenable until space came back.
        log.warning("disk full at start (%s); released the reserve the previous run left", e)
        try:
            return sp._open_disk()
        except (sqlite3.Error, OSError) as again:
            e = again
    state = classify(e)
    if state == IO_ERROR:
        state = READ_ONLY if read_only_fs(sp) else UNOPENABLE
    block(sp, state, f"cannot open {sp.path}: {e}")
    return "unknown"


def quarantine(sp: Spool, e: BaseException) -> str:
    # A flash card that lied about a write: keep the evidence, start a fresh spool, count what it held.
    aside = sp.path.with_name(f"{sp.path.name}.corrupt-{int(time.time())}")
    log.error("spool %s is corrupt (%s); moved aside to %s", sp.path, e, aside)
    for suffix in ("", "-wal", "-shm"):
        p = Path(str(sp.path) + suffix)
        if p.exists():
            p.rename(Path(str(aside) + suffix))
    n, exact = count_lost(aside)
    log.error("the corrupt spool held %s%d records; counted as dropped", "" if exact else "an estimated ",
              n)
    sp.recovered_from_corruption = True
    sp._connect()
    if exact:
        sp._count_drop("spool_corrupt", n)
    else:
        sp._count_drop("spool_corrupt.estimated", n)
    return "unclean"


def count_lost(path: Path) -> tuple[int, bool]:
    """How many records a quarantined spool file held: (count, exact). Exact when SQLite can still read the
    two tables; otherwise estimated from the file sizes (database + WAL)."""
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        try:
            n = db.execute("SELECT COUNT(*) FROM records").fetchone()[0]
            nb = db.execute("SELECT COALESCE(SUM(n_records), 0) FROM batches").fetchone()[0]
            held = 0
            with contextlib.suppress(sqlite3.Error):
                held = db.execute("SELECT COALESCE(SUM(n_records), 0) FROM held").fetchone()[0]
            return int(n) + int(nb) + int(held), True
        finally:
            db.close()
    except sqlite3.Error:
        pass
    size = 0
    for s in ("", "-wal"):
        with contextlib.suppress(OSError):
            size += Path(str(path) + s).stat().st_size
    return max(1, size // spool_disk.EST_BYTES_PER_RECORD), False


def retry_disk(sp: Spool) -> bool:
    """Try to write what memory holds to disk again (reopening if needed); True if writable now."""
    sp._last_disk_try = time.monotonic()
    if sp._db is None:
        try:
            sp._open_disk()
        except (sqlite3.Error, OSError) as e:
            sp._last_disk_try = time.monotonic()
            set_trouble(sp, sp._trouble.state if sp._trouble else UNOPENABLE,
                        f"cannot open {sp.path}: {e}")
            return False
        log.warning("spool %s opened after %.0f s", sp.path, time.monotonic() - sp._blocked_mono)
    if sp._trouble is not None and sp._trouble.state in (DISK_FULL, LOW_HEADROOM) and make_room(sp):
        # No write can go through (each one adds to the WAL): records stay in memory, where they are sealed
        # and sent, instead of flipping to disk and back every 5 s (a write fitted now and then into what a
        # failed one left of the WAL; its records then waited on disk, two log lines and a new `since` a
        # retry) — the extreme case: the WAL holds more new pages than the free space and reserve together.
        wal = 0
        with contextlib.suppress(OSError):
            wal = Path(str(sp.path) + "-wal").stat().st_size
        block(sp, DISK_FULL, f"no room to checkpoint the {wal // 1024} KiB WAL into the database file: "
                             f"{sp.n_records} records and {sp.n_batches} batches on disk wait for space")
        return False
    for attempt in range(2):
        n = sp._mem.n_records
        if sp._write_all(sp._mem.take()):
            unblock(sp, n)
            return True
        # The checkpoint went through but the write still found no room: the WAL it restarts is smaller than
        # one transaction (a start on a full disk after kill -9: 514 records on disk and the broker up, stuck
        # until space came back while the reserve's 128 KiB sat unused). Records on disk matter more.
        if attempt or sp._trouble is None or sp._trouble.state != DISK_FULL or \
                not give_back_reserve(sp, "the retry could not write"):
            return False
    return False


def give_back_reserve(sp: Spool, why: str) -> bool:
    if not (sp.on_disk and sp._has_reserve and spool_disk.release_reserve(sp.path)):
        return False
    sp._has_reserve = False
    log.warning("disk full (%s); released the %d KiB reserve", why, sp.budget.reserve // 1024)
    return True


def make_room(sp: Spool) -> bool:
    """Before writing again on a full disk: checkpoint the WAL and truncate it, giving back the reserve if
    the checkpoint itself needs room in the database file. Checkpoints otherwise follow a commit, and on a
    disk filled by the spool's own WAL no commit went through again: the retry failed every 5 s for good
    while the records on disk waited (seen on a 1 MiB partition with a 64 MiB cap). The reserve is
    re-made once the file system has room for it and the WAL's share (_headroom_blocks).
    True if the checkpoint cannot go through for want of space, with no reserve left to give."""
    if not sp.on_disk or sp._db is None:
        return False
    for attempt in range(2):
        full = False
        try:
            busy, frames, done = sp._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy and frames == done:
                return False
            why = f"{done} of {frames} WAL frames checkpointed"
        except sqlite3.Error as e:
            why, full = str(e), classify(e) == DISK_FULL
        if attempt or not give_back_reserve(sp, f"checkpoint: {why}"):
            log.debug("checkpoint on a full disk incomplete: %s", why)
            return full
    return False


def checkpoint_failed(sp: Spool, e: sqlite3.Error) -> None:
    log.debug("checkpoint deferred: %s", e)
    if classify(e) == DISK_FULL:
        make_room(sp)     # or every later commit grows the WAL until nothing can be written


def evict(sp: Spool, excess: int, why: EvictionDrops) -> dict[str, int]:
    """Free at least `excess` bytes (plus 5 % headroom so we do not evict on every put), counted as `why`."""
    target = excess + sp._db_cap // 20
    db = sp._conn
    freed = 0
    dropped: dict[str, int] = {}
    for prio, reason in why.records:
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
        dropped[why.batch_records] = dropped.get(why.batch_records, 0) + row[1]
    # The loops above work on estimates; the caller recounts from the database afterwards.
    sp.bytes -= freed
    return dropped


def drop_rows(sp: Spool, ids: list[int], reason: str) -> None:
    with sp._txn() as db:
        sp._apply_acks(db)
        db.execute(f"DELETE FROM records WHERE id IN ({','.join('?' * len(ids))})", ids)
        sp.drops = sp._persist_drops(db, {reason: len(ids)})
    sp._recount()


def unseal(sp: Spool, seq: int) -> None:
    if seq < 0:
        b = sp._mem.batches.get(seq)
        if b is not None and b.persisted:
            sp._acked_held.add((b.sid, b.seq))
        mem = sp._memory()
        mem.unseal(seq)
        sp._count_drops(mem.bound())
        return
    try:
        unseal_disk(sp, seq)
    except sqlite3.Error as e:
        fail(sp, e)


def unseal_disk(sp: Spool, seq: int) -> None:
    row = sp._conn.execute("SELECT payload FROM batches WHERE seq = ?", (seq,)).fetchone()
    if row is None:
        return
    batch = wire.decode(row[0], wire.Limits(max_payload=1 << 30, max_inflated=1 << 30))
    assert isinstance(batch, wire.Batch)
    with sp._txn() as db:
        sp._apply_acks(db)
        db.execute("DELETE FROM batches WHERE seq = ?", (seq,))
        # Negative ids sort first, so the re-queued records keep their place ahead of newer ones.
        low = db.execute("SELECT MIN(id) FROM records").fetchone()[0] or 1
        start = min(low, 1) - len(batch.records) - 1
        db.executemany("INSERT INTO records (id, prio, boot, synced, wall_ms, mono_ms, body) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       [(start + i, r.priority, r.boot, int(r.synced), r.wall_ms, r.mono_ms, _body(r))
                        for i, r in enumerate(batch.records)])
    sp._recount()


def drop_batch(sp: Spool, seq: int, reason: str) -> None:
    if seq < 0:
        b = sp._mem.batches.pop(seq, None)
        if b is not None:
            if b.persisted:
                sp._acked_held.add((b.sid, b.seq))
            sp._count_drop(reason, b.n_records)
        return
    if seq in sp._acked:
        return
    row = sp._conn.execute("SELECT n_records FROM batches WHERE seq = ?", (seq,)).fetchone()
    if row is None:
        return
    try:
        with sp._txn() as db:
            sp._apply_acks(db)
            db.execute("DELETE FROM batches WHERE seq = ?", (seq,))
            sp.drops = sp._persist_drops(db, {reason: row[0]})
        sp._recount()
    except sqlite3.Error as e:
        fail(sp, e)
        sp._acked.add(seq)
        sp._count_drop(reason, row[0])


def final_flush(sp: Spool) -> None:
    """Stopping while degraded: commit the tally first (everything in memory counted as
    `shutdown.unwritable`), then write batches and records chunk by chunk, each chunk taking its count
    back off the tally in the same transaction. Whatever stays in memory is exactly what is counted."""
    pending = sp._mem.n_records + sum(b.n_records for b in sp._unpersisted_batches())
    for attempt in range(2):
        try:
            with sp._txn() as db:
                sp._apply_acks(db)
                sp._persist_drops(db, {"shutdown.unwritable": pending})
                db.execute("INSERT OR REPLACE INTO meta VALUES ('clean', '1')")
            break
        except sqlite3.Error as e:
            if attempt == 0 and give_back_reserve(sp, f"at shutdown: {e}"):
                continue
            give_up_memory(sp, f"the spool cannot be written ({e})")
            return
    sp.drops = sp._merge(sp.drops, {"shutdown.unwritable": pending})
    if sp._no_room and pending:
        log.error("stopping with the file system below its headroom: %d records held in memory counted as "
                  "shutdown.unwritable, not written", pending)
        return
    written = 0
    for attempt in range(2):
        try:
            for b in sp._unpersisted_batches():
                with sp._txn() as db:
                    sp._insert_held(db, [b])
                    sp._persist_drops(db, {"shutdown.unwritable": -b.n_records})
                b.persisted = True
                sp.drops = sp._merge(sp.drops, {"shutdown.unwritable": -b.n_records})
                written += b.n_records
            while sp._mem.n_records:
                chunk = sp._mem.take(500)
                try:
                    sp._write_chunk(chunk, [_body(r) for r in chunk], {"shutdown.unwritable": -len(chunk)})
                except sqlite3.Error:
                    sp._memory().add(chunk, front=True)
                    raise
                written += len(chunk)
            break
        except sqlite3.Error as e:
            # The mark and the tally are committed: the reserve may go to the records themselves now (they
            # were counted lost with its 128 KiB unused beside them).
            if attempt == 0 and give_back_reserve(sp, f"stopping: {e}"):
                continue
            log.error("stopping with the spool not writable (%s): %d records written, %d counted as "
                      "shutdown.unwritable", e, written, pending - written)
            return
    if pending:
        log.warning("stopping: %d records held in memory were written to the spool", written)


def give_up_memory(sp: Spool, why: str) -> None:
    """Neither the spool nor the broker takes what memory holds: count it, and put every count the spool
    lacks into the fallback ledger (spool_ledger) for the next start to report."""
    from . import spool_ledger  # only here: a trouble the disk recovers from never needs the ledger

    n_metric = sum(1 for r in sp._mem.records if r.kind.evictable_first)
    n_event = sp._mem.n_records - n_metric
    n_batch = sum(b.n_records for b in sp._mem.batches.values() if not b.persisted)
    n = n_metric + n_event + n_batch
    sp._count_drop("stop_unpersisted.metric", n_metric)
    sp._count_drop("stop_unpersisted.event", n_event)
    sp._count_drop("stop_unpersisted.batch_records", n_batch)
    # Only what no one has yet: not in meta.drops, not in an agent.drops record the broker acknowledged.
    on_disk, sent = drops_on_disk(sp), sp._delivered
    unpersisted = {k: v - max(on_disk.get(k, 0), sent.get(k, 0)) for k, v in sp.drops.items()}
    unpersisted = {k: v for k, v in unpersisted.items() if v > 0}
    # With the spool open, this stop is orderly but cannot write its clean mark: the ledger records the
    # clean stop too (its run's sid), even with no count to carry.
    if not unpersisted and sp._db is None:
        return
    if sp.ledger_path is None:
        if unpersisted:
            log.error("stopping: %s; %d records held in memory are lost; no drop ledger configured, counts "
                      "not persisted (drops %s)", why, n, json.dumps(unpersisted, sort_keys=True))
        return
    run = {"boot": sp.boot_id, "pid": os.getpid(), "sid": sp.sid, "memory_sid": sp._mem.sid,
           "why": why}
    try:
        sp._ledger = spool_ledger.write(sp.ledger_path, unpersisted, run, sp._now_ms())
    except OSError as e:
        log.error("stopping: %s; %d records held in memory are lost and the drop ledger %s cannot be "
                  "written either (%s); counts lost: %s", why, n, sp.ledger_path, e,
                  json.dumps(unpersisted, sort_keys=True))
        return
    if not unpersisted:
        log.warning("stopping: %s; nothing held in memory is lost; the clean stop is recorded in the drop "
                    "ledger %s for the next start", why, sp.ledger_path)
        return
    log.error("stopping: %s; %d records held in memory are lost; counted in the drop ledger %s for the "
              "next start: %s", why, n, sp.ledger_path, json.dumps(unpersisted, sort_keys=True))


def drops_on_disk(sp: Spool) -> dict[str, int]:
    if sp._db is None:
        return {}
    try:
        row = sp._db.execute("SELECT v FROM meta WHERE k = 'drops'").fetchone()
        return {str(k): int(v) for k, v in json.loads(row[0]).items()} if row else {}
    except (sqlite3.Error, ValueError, TypeError, AttributeError):
        return {}      # unreadable: the ledger over-reports rather than losing counts
