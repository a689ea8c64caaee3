"""What the spool costs on disk, and what the file system can spare: pure arithmetic plus a few syscalls.

No threads; called by the `Spool` on the pipeline thread. Hand-written because SQLite's own limits are
about pages, not about a partition: `max_mib` has to cover the database, its WAL, the WAL index (-shm) and
the shutdown reserve, all at once, and the free-space headroom has to be read from statvfs.

Budget for a cap C (`Budget.for_cap`), measured on the default 64 MiB: WAL checkpoint threshold W = C/8
clamped to 16 KiB..4 MiB (`journal_size_limit` = W, so a checkpointed WAL is cut back to W), allowance for the
WAL 1.5 W but at least W + 64 KiB (one transaction may cross W before the checkpoint after its commit; a put
that evicts rewrites ~20 pages whatever the cap, 78 KiB of WAL measured at max_mib 0.25, which put that cap's
files at 1.08x it with 1.5 W alone), -shm 32 KiB (one wal-index block covers 4,096 frames, more than the WAL
ever holds), reserve R = C/16 clamped to 16..128 KiB. The database
itself may use the rest; the spool evicts by page count (`PRAGMA page_count - freelist_count`), so B-tree
overhead is measured, not guessed.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from .dataclass_shared import dataclass

KIB = 1024
SHM_BYTES = 32 * KIB
WAL_TXN_BYTES = 64 * KIB           # WAL one evicting put may write beyond W, at the smallest caps
MIN_DB_BYTES = 64 * KIB            # below this the spool is not worth writing: hold records in memory
SUFFIXES = ("", "-wal", "-shm", "-journal")
RESERVE_SUFFIX = ".reserve"
# Average disk bytes per record in a spool (64-byte row overhead + ~40-byte body, measured on system-probe
# samples in tools/bench/flash.py); used only to estimate what an unreadable corrupt file held
# (spool_trouble.count_lost).
EST_BYTES_PER_RECORD = 110


@dataclass(frozen=True)
class Budget:
    cap: int            # everything on disk: db + wal + shm + reserve
    wal_limit: int      # checkpoint when the WAL is larger; also journal_size_limit
    reserve: int
    db_cap: int         # what the database file may use

    @staticmethod
    def for_cap(cap: int, reserve: int | None = None) -> Budget:
        """The split of `cap`; `reserve` fixes the reserve's size (it is allocated once, at open)."""
        wal = min(4096 * KIB, max(16 * KIB, cap // 8))
        if reserve is None:
            reserve = min(128 * KIB, max(16 * KIB, cap // 16))
        # 2 % + 4 pages of slack: the file holds free pages the page count of a transaction does not show.
        wal_room = max(wal * 3 // 2, wal + WAL_TXN_BYTES)
        db = (cap - wal_room - SHM_BYTES - reserve) * 49 // 50 - 4 * 4096
        return Budget(cap, wal, reserve, max(db, 0))


def files(path: Path) -> list[Path]:
    return [Path(str(path) + s) for s in SUFFIXES] + [reserve_path(path)]


def reserve_path(path: Path) -> Path:
    return Path(str(path) + RESERVE_SUFFIX)


def disk_bytes(path: Path) -> int:
    """Bytes the spool's files occupy (allocated blocks, so a sparse or preallocated file counts right)."""
    total = 0
    for p in files(path):
        with contextlib.suppress(OSError):
            st = p.stat()
            total += max(st.st_blocks * 512, 0) if st.st_blocks else st.st_size
    return total


def free_bytes(directory: Path) -> int | None:
    """Bytes an unprivileged writer may still use on the spool's file system (None if unknown)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def make_reserve(path: Path, size: int) -> bool:
    """Keep `size` bytes allocated beside the spool, to give back at shutdown when the disk is full so the
    final drop counts and the clean-shutdown mark can still be committed. True if it exists afterwards."""
    p = reserve_path(path)
    try:
        if p.exists() and p.stat().st_size >= size:
            return True
        fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError:
                os.ftruncate(fd, 0)
                raise
            os.fsync(fd)
        finally:
            os.close(fd)
        return True
    except OSError:
        with contextlib.suppress(OSError):
            if p.exists() and p.stat().st_size < size:
                p.unlink()
        return False


def shm_room(path: Path) -> bool:
    """Whether SQLite may map the WAL index here without a SIGBUS: the first connection cuts `-shm` to 3 bytes
    and extends it by writing the last byte of each 4 KiB page only. On a file system with smaller blocks
    (mkfs.ext4's default below 512 MiB: 1 KiB) the rest of each page stays a hole, and storing into a hole
    through the mapping on a full disk is a SIGBUS that kills the agent (a restart loop after kill -9 on a
    full disk). Room for the whole index (SHM_BYTES) before opening; `fill_shm` after it."""
    free = free_bytes(path.parent)
    return free is None or free >= SHM_BYTES


def fill_shm(path: Path) -> None:
    """Allocate the holes SQLite left in the open spool's `-shm` (see shm_room), so that later stores into
    the mapping never need a block from a file system that may be full by then. No room for them (the open's
    own writes, or another process, took it since shm_room) raises ENOSPC: the caller closes the database and
    runs as disk full, retried, instead of running on with holes a later store dies of (issue 11 re-run: one
    SIGBUS after a start on a still-full 1 KiB-block ext4). A file system without fallocate is left as it is."""
    try:
        fd = os.open(str(path) + "-shm", os.O_RDWR)
    except OSError:
        return  # no index (not in WAL mode yet, or gone): nothing to fill
    try:
        size = os.fstat(fd).st_size
        if size:
            os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise OSError(e.errno, "no room to allocate the WAL index", str(path) + "-shm") from None
    finally:
        os.close(fd)


def release_reserve(path: Path) -> bool:
    try:
        reserve_path(path).unlink()
        return True
    except OSError:
        return False
