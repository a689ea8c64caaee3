"""A background thread that reads one slow source (the modem, a TCP probe) on its own schedule, so a modem that
takes seconds to answer never delays the detector tick. Faster while an episode is open.

`snapshot()` also says when the latest reading began (the `now` clock, the probe's monotonic clock): with a 5 s poll
while the link is fine, a reading can be that old when the detector sees it, and the loss start is
back-dated with it (classify.loss_start)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from ...counters import Counters

T = TypeVar("T")


class Poller(Generic[T]):
    def __init__(self, name: str, read: Callable[[], T], interval_s: float, fast_interval_s: float, *,
                 counters: Counters, log: logging.Logger, close: Callable[[], None] | None = None,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.read = read
        self.interval_s = interval_s
        self.fast_interval_s = fast_interval_s
        self.counters = counters
        self.log = log
        self._close = close
        self.now = now
        # One tuple, replaced whole: the tick thread never sees a reading with another reading's time.
        self._snap: tuple[T | None, float | None] = (None, None)
        self._fast = False
        self._ok: bool | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def latest(self) -> T | None:
        return self._snap[0]

    def snapshot(self) -> tuple[T | None, float | None]:
        """(latest reading, when it began)."""
        return self._snap

    def set_fast(self, fast: bool) -> None:
        if fast != self._fast:
            self._fast = fast
            if fast:
                self._wake.set()  # poll now: the first seconds of an episode matter most

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"link-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(5.0)
        if self._close:
            try:
                self._close()
            except OSError:
                pass

    def poll_once(self) -> None:
        began = self.now()
        try:
            value = self.read()
        except Exception as e:  # noqa: BLE001 - a source that fails is reported, never fatal
            self._snap = (None, None)
            self.counters.inc(f"{self.name}_errors")
            if self._ok is not False:
                self.log.warning("%s unreadable: %s: %s", self.name, type(e).__name__, e)
            self._ok = False
            return
        self._snap = (value, began)
        if self._ok is not True:
            self.log.info("%s readable", self.name)
        self._ok = True

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll_once()
            self._wake.wait(self.fast_interval_s if self._fast else self.interval_s)
            self._wake.clear()
