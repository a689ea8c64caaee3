"""Throughput and lag accounting for `--stats` (one line per interval on stderr, never per message)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


def _q(xs: list[float], p: float) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


@dataclass
class Stats:
    name: str = "ingest"
    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    conflicts: int = 0          # identities reused with other bytes (also in rejected: dead letters)
    records: int = 0
    status: int = 0
    status_replays: int = 0     # status messages already stored (retained ones replayed on subscribe)
    retries: int = 0
    decode_s: float = 0.0   # strict decoding (CPU)
    write_s: float = 0.0    # store transactions, including lock waits and fsync
    started: float = field(default_factory=time.monotonic)
    _mark: float = field(default_factory=time.monotonic)
    _mark_records: int = 0
    _mark_batches: int = 0
    _lags: list[float] = field(default_factory=list)

    def note_lag(self, lag_s: float) -> None:
        if len(self._lags) < 100_000:
            self._lags.append(lag_s)

    def line(self, queued: int, pending: int) -> str:
        """Rates since the previous line; lag = commit time minus the newest record's wall time in a batch
        (record creation → durable in the backend), queue = messages received but not yet committed."""
        now = time.monotonic()
        dt = max(now - self._mark, 1e-6)
        rec_s = (self.records - self._mark_records) / dt
        bat_s = (self.stored - self._mark_batches) / dt
        lags = self._lags
        lag = (f"lag p50 {_q(lags, 0.5):.1f} s p95 {_q(lags, 0.95):.1f} s max {max(lags):.1f} s" if lags
               else "lag -")
        self._mark, self._mark_records, self._mark_batches, self._lags = now, self.records, self.stored, []
        return (f"{self.name}: {rec_s:,.0f} rec/s {bat_s:,.0f} batch/s | total {self.records:,} rec "
                f"{self.stored:,} batches, dup {self.duplicates:,}, dead {self.rejected:,} "
                f"(conflict {self.conflicts:,}), status {self.status:,} (replayed {self.status_replays:,}), "
                f"retries {self.retries:,} | queue {queued + pending:,} | {lag}")
