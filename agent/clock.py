"""The one place that reads clocks. Everything else gets a Clock as a parameter so tests can pass a fake."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading
import time
import uuid
from pathlib import Path
from typing import Protocol

# adjtimex(2) returns TIME_ERROR (5) while the kernel considers the clock unsynchronised (STA_UNSYNC set).
_TIME_ERROR = 5
# Before this instant (2024-01-01) the wall clock is certainly wrong: an RTC that lost power, or none at all.
_PLAUSIBLE_AFTER_S = 1_704_067_200


class Clock(Protocol):
    """What records need from time: wall, boot-relative monotonic, the boot, and trust in the wall clock."""

    boot_id: str

    def wall(self) -> float: ...

    def mono(self) -> float: ...

    def synced(self) -> bool: ...


def read_boot_id(path: str = "/proc/sys/kernel/random/boot_id") -> str:
    try:
        return uuid.UUID(Path(path).read_text().strip()).hex
    except (OSError, ValueError):
        # Without procfs there is no kernel boot id; a per-process one still keeps identities apart.
        return uuid.uuid4().hex


class _Timex(ctypes.Structure):
    # Only `modes` matters (0 = read-only query); the rest is padding large enough for every ABI.
    _fields_ = [("modes", ctypes.c_uint), ("_pad", ctypes.c_byte * 512)]


@functools.cache
def _libc() -> ctypes.CDLL | None:
    # Once per process: find_library forks `/sbin/ldconfig -p` and parses its output (~10 ms of CPU and a
    # fork of the whole agent); calling it at every recheck (10 s) was the system probe's largest idle cost.
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name, use_errno=True) if name else None
    except OSError:
        return None


def _kernel_says_synced() -> bool | None:
    libc = _libc()
    if libc is None:
        return None
    try:
        state = libc.adjtimex(ctypes.byref(_Timex()))
    except AttributeError:
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR


class SystemClock:
    """CLOCK_BOOTTIME for monotonic time: unlike CLOCK_MONOTONIC it keeps counting through suspend,
    which head units do every time the car is parked."""

    def __init__(self, boot_id: str | None = None, recheck_s: float = 10.0) -> None:
        self.boot_id = boot_id or read_boot_id()
        self._recheck_s = recheck_s
        self._lock = threading.Lock()
        self._synced = False
        self._checked_at = -1e18

    def wall(self) -> float:
        return time.time()

    def mono(self) -> float:
        return time.clock_gettime(time.CLOCK_BOOTTIME)

    def synced(self) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._checked_at >= self._recheck_s:
                kernel = _kernel_says_synced()
                plausible = time.time() >= _PLAUSIBLE_AFTER_S
                self._synced = bool(kernel) and plausible
                self._checked_at = now
            return self._synced


class FakeClock:
    """A clock tests drive by hand."""

    def __init__(self, wall: float = 1_767_225_600.0, mono: float = 1000.0, synced: bool = True,
                 boot_id: str = "0" * 31 + "1") -> None:
        self.boot_id = boot_id
        self._wall = wall
        self._mono = mono
        self._synced = synced

    def wall(self) -> float:
        return self._wall

    def mono(self) -> float:
        return self._mono

    def synced(self) -> bool:
        return self._synced

    def advance(self, seconds: float) -> None:
        self._wall += seconds
        self._mono += seconds

    def set_synced(self, synced: bool) -> None:
        self._synced = synced
