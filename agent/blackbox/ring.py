"""The pre-trigger ring: the last `window_s` seconds of context per channel, bounded in time AND in bytes.

Written to from several threads (the black box's sampler, probe threads through the context tap, the pipeline
thread through the record observer), read by the snapshot builder; one lock, held for the rate limit, the copy
of a kept sample and deque operations.

Bytes are an estimate of what the samples cost as Python objects (`approx_size`), not of their wire size:
the bound is about the car's RAM. At defaults the ring holds ~60 system samples, 12 process tables, ≤ 300 kmsg
lines and ~60 samples each of link, display and 4 CAN buses: 0.33 MiB measured with tracemalloc
(docs/performance.md), well inside `max_kib` (1.5 MiB), which is there for a kernel log storm.

Rate limits: every channel but kmsg keeps at most one sample per `min_gap_s` (the first one wins; later ones
in the same gap are counted as `coalesced`); kmsg lines pass a token bucket (`kmsg_per_s`, `kmsg_burst`), and
the first line after a suppressed run carries `skipped` = how many were suppressed. The limit is checked before
the sample is copied: at 10 Hz DRM polling ~9 of 10 display samples are dropped, and a dropped one costs no copy.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

from ..counters import Counters

Sample = tuple[float, dict[str, Any]]


def approx_size(v: Any) -> int:
    """Rough CPython object cost in bytes (dict ~ 64 + 40 per item, str 50 + len, number 32, list 56 + 8 per item)."""
    if isinstance(v, dict):
        return 64 + sum(40 + approx_size(x) for x in v.values())
    if isinstance(v, (list, tuple)):
        return 56 + sum(8 + approx_size(x) for x in v)
    if isinstance(v, str):
        return 50 + len(v)
    return 32


class ContextRing:
    def __init__(self, window_s: float, max_bytes: int, *, min_gap_s: float = 0.9, kmsg_per_s: float = 5.0,
                 kmsg_burst: int = 20, kmsg_max_chars: int = 160, counters: Counters | None = None) -> None:
        self.window_s = window_s
        self.max_bytes = max_bytes
        self.min_gap_s = min_gap_s
        self.kmsg_per_s = kmsg_per_s
        self.kmsg_burst = kmsg_burst
        self.kmsg_max_chars = kmsg_max_chars
        self.counters = counters or Counters()
        self._ch: dict[str, deque[tuple[float, dict[str, Any], int]]] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self._tokens = float(kmsg_burst)
        self._tokens_t: float | None = None
        self._skipped = 0
        self._last: dict[tuple[str, str], float] = {}

    @property
    def bytes(self) -> int:
        return self._bytes

    def add(self, channel: str, t: float, fields: Mapping[str, Any], key: str = "") -> bool:
        """Keep one sample taken at monotonic time t; False when a rate limit dropped it. `key` separates
        sources sharing a channel for the rate limit (one CAN channel, several buses)."""
        with self._lock:
            q = self._ch.setdefault(channel, deque())
            if channel == "kmsg":
                if not self._kmsg_token(t):
                    self._skipped += 1
                    self.counters.inc("kmsg_suppressed")
                    return False
                data = dict(fields)
                text = data.get("msg")
                if isinstance(text, str) and len(text) > self.kmsg_max_chars:
                    data["msg"] = text[: self.kmsg_max_chars]
                if self._skipped:
                    data["skipped"], self._skipped = self._skipped, 0
            else:
                last = self._last.get((channel, key))
                if last is not None and 0 <= t - last < self.min_gap_s:
                    self.counters.inc(f"coalesced.{channel}")
                    return False
                self._last[(channel, key)] = t
                data = dict(fields)
            size = 48 + approx_size(data)
            q.append((t, data, size))
            self._bytes += size
            self._trim(t)
            return True

    def _kmsg_token(self, t: float) -> bool:
        if self._tokens_t is not None:
            self._tokens = min(float(self.kmsg_burst), self._tokens + (t - self._tokens_t) * self.kmsg_per_s)
        self._tokens_t = t
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _trim(self, now: float) -> None:
        horizon = now - self.window_s
        for q in self._ch.values():
            while q and q[0][0] < horizon:
                self._bytes -= q.popleft()[2]
        while self._bytes > self.max_bytes:
            # Over the byte bound (a log storm): the oldest sample of all channels goes first.
            q = min((q for q in self._ch.values() if q), key=lambda q: q[0][0])
            self._bytes -= q.popleft()[2]
            self.counters.inc("evicted_bytes_bound")

    def window(self, t0: float, t1: float, channels: Iterable[str]) -> dict[str, list[Sample]]:
        """Samples with t0 <= t <= t1 of each channel asked for (copies of the references, oldest first)."""
        with self._lock:
            return {c: [(t, d) for t, d, _ in self._ch.get(c, ()) if t0 <= t <= t1] for c in channels}

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"bytes": self._bytes, "samples": {c: len(q) for c, q in self._ch.items()}}
