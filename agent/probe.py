"""The probe contract. Probes only collect and detect; buffering, retry and batching live outside them.

A probe module `agent/probes/<name>.py` (or package) exposes:
- `Config`: a frozen dataclass for `[probes.<name>]` with an `enabled` field;
- `build(cfg, ctx) -> list[Probe]`: the probes to run for that config (none when disabled).

The base classes own the loop (python-can's recv/_recv_internal split): scheduling, error counting, back-off
and status. A probe implements only the small part that differs.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import field
from typing import Any

from .clock import Clock
from .counters import Counters
from .dataclass_shared import dataclass
from .records import Record, RecordFactory


@dataclass(frozen=True)
class UplinkView:
    """What the uplink tells probes (the link probe's data-path signal)."""

    connected: bool = False
    connected_since: float | None = None
    last_ack_wall: float | None = None
    last_ack_mono: float | None = None
    broker: str = ""


@dataclass
class ProbeContext:
    """Everything a probe may touch outside its own source, handed in so tests pass fakes."""

    clock: Clock
    emit: Callable[[Record], None]
    uplink: Callable[[], UplinkView] = field(default=lambda: UplinkView())
    spool_dir: str = "/var/lib/icvq"
    # "The way to the broker may be back" (modem registered, TCP target answers): the uplink retries at once.
    way_back: Callable[[str], None] = field(default=lambda reason: None)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("icvq.probe"))
    # High-rate context for the black box's ring (agent/blackbox): channel, flat fields. A no-op unless the
    # black box runs; probes call it at their own sampling rate and the ring rate-limits.
    context: Callable[[str, Mapping[str, Any]], None] = field(default=lambda _c, _f: None)


class Probe(ABC):
    """A running source of records. Subclasses pick PeriodicProbe or StreamProbe."""

    name: str = "probe"
    max_backoff_s: float = 60.0

    def __init__(self, ctx: ProbeContext, name: str | None = None) -> None:
        self.ctx = ctx
        if name:
            self.name = name
        self.rec = RecordFactory(ctx.clock)
        self.counters = Counters()
        self.log = logging.getLogger(f"icvq.probe.{self.name}")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = "starting"
        self._state_since = time.time()   # wall clock of the last state change, for the health verdict
        self._last_error = ""
        self._errors_in_row = 0
        self._lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"probe-{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 3.0) -> None:
        self._stop.set()
        self._wakeup()
        if self._thread:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                self.log.warning("probe %s did not stop within %.1f s", self.name, timeout_s)
        self._close_quietly()

    def _wakeup(self) -> None:
        """Interrupt a blocking read on stop (streams override)."""

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- reporting ------------------------------------------------------------------------------------
    def emit(self, record: Record) -> None:
        self.ctx.emit(record)

    def emit_all(self, records: Iterable[Record]) -> None:
        for r in records:
            self.ctx.emit(r)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"state": self._state, "since": self._state_since, "last_error": self._last_error,
                    "counters": self.counters.snapshot(), **self.extra_status()}

    def extra_status(self) -> dict[str, Any]:
        return {}

    def active_episodes(self) -> list[dict[str, Any]]:
        """Ongoing episodes (name, episode id, since) for `icvq status`."""
        return []

    def _ok(self) -> None:
        with self._lock:
            if self._state != "ok":
                if self._state in ("degraded", "error"):
                    self.log.info("probe %s recovered", self.name)
                self._state = "ok"
                self._state_since = time.time()
            self._errors_in_row = 0

    def _failed(self, exc: BaseException) -> float:
        """Record a failure; returns how long to back off. One log line per state change, not per error."""
        with self._lock:
            self._errors_in_row += 1
            msg = f"{type(exc).__name__}: {exc}"
            if msg != self._last_error or self._state == "ok":
                self.log.warning("probe %s degraded: %s", self.name, msg)
            self._last_error = msg
            state = "degraded" if self._errors_in_row < 5 else "error"
            if state != self._state:
                self._state, self._state_since = state, time.time()
            self.counters.inc("errors")
            return min(self.max_backoff_s, 0.5 * 2 ** min(self._errors_in_row, 10))

    def _close_quietly(self) -> None:
        try:
            self.close()
        except Exception as e:  # noqa: BLE001 - closing is best effort
            self.log.debug("close of %s failed: %s", self.name, e)

    def close(self) -> None:
        """Release sources; called on stop and before a retry."""

    @abstractmethod
    def _run(self) -> None: ...


class PeriodicProbe(Probe):
    """Calls `sample()` every `interval_s`, on a fixed grid so a slow sample does not drift the rate."""

    def __init__(self, ctx: ProbeContext, interval_s: float, name: str | None = None) -> None:
        super().__init__(ctx, name)
        self.interval_s = interval_s

    @abstractmethod
    def sample(self) -> Iterable[Record]: ...

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.emit_all(self.sample())
                self._ok()
                delay = 0.0
            except Exception as e:  # noqa: BLE001 - a probe never takes the daemon down
                delay = self._failed(e)
            next_at = max(next_at + self.interval_s, time.monotonic() + delay)
            self._stop.wait(max(0.0, next_at - time.monotonic()))


class StreamProbe(Probe):
    """Owns a read loop over a blocking source: `open()`, then `receive(timeout_s)` until stop; on error the
    source is closed and reopened with back-off."""

    poll_s: float = 0.5

    @abstractmethod
    def open(self) -> None: ...

    @abstractmethod
    def receive(self, timeout_s: float) -> Iterable[Record]: ...

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.open()
                self._ok()
                while not self._stop.is_set():
                    self.emit_all(self.receive(self.poll_s))
                    self._ok()
            except Exception as e:  # noqa: BLE001 - a probe never takes the daemon down
                delay = self._failed(e)
                self._close_quietly()
                self._stop.wait(delay)
