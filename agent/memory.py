"""Process memory hygiene on glibc: one malloc arena, and freed heap pages handed back to the kernel.

No threads of its own: `one_arena()` runs once in `main()` before any thread starts, `trim()` on the main
thread's turn (daemon.run_forever: after the first turn, then every TRIM_EVERY_S).

Why (issue 13, RSS ≤ 1.1x the floor of what the agent imports): glibc gives each thread that allocates its own
arena (the agent has 7 threads, each arena keeps its freed pages), and start-up (config parsing, imports,
opening the spool) leaves free pages inside the main heap that malloc keeps. Measured on the 2-core build
machine (`python -m tools.bench.lean`, VmRSS after 20 s idle): one arena -0.6 MiB, trim -1.1 MiB, both -1.6
MiB of 32.3 MiB. A single arena costs nothing here: the threads are idle almost always and the GIL already
serialises most allocations. malloc_trim takes ~1 µs on this heap. Via ctypes because Python exposes neither
call; on a libc without them (musl) both are no-ops.
"""

from __future__ import annotations

import ctypes
import functools
import logging

log = logging.getLogger("icvq.memory")

M_ARENA_MAX = -8  # glibc malloc.h
TRIM_EVERY_S = 60.0


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)  # the symbols already loaded into the process: libc's among them
    except OSError:
        return None


def one_arena() -> bool:
    """Before any thread starts: every thread allocates from the main arena."""
    libc = _libc()
    try:
        return bool(libc is not None and libc.mallopt(M_ARENA_MAX, 1))
    except AttributeError:
        return False


def trim() -> None:
    """Hand free heap pages back to the kernel (glibc ≥ 2.8 also releases free pages inside the heap)."""
    libc = _libc()
    try:
        if libc is not None:
            libc.malloc_trim(0)
    except AttributeError:
        pass
