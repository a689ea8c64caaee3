"""The spool's RAM side: records and sealed batches held while the spool file cannot be written.

Owned by the `Spool` (single writer: the pipeline thread); no threads of its own. When the disk is full,
read-only or the spool cannot be opened at all, the agent must keep delivering, so records wait here and
are sealed into batches here. Two things make that safe:

- **Identity.** A batch sealed in memory cannot advance the persisted `next_seq`, so it gets a sid of its
  own: a random 63-bit number (like a spool sid, and never equal to this spool's), drawn once per process the
  first time it seals in memory, with `seq` counting from 1. Two random 63-bit sids of one device meet with
  probability ~2^-63 per pair, the same odds the spool sid itself relies on; 63 bits, not 64, because the
  backend stores sid in a signed 64-bit column (docs/wire-format.md, "Identity").
- **Bounds.** Unsealed records plus the records inside memory batches are capped at `max_records`; the
  eviction order is the spool's (oldest metrics, oldest events, oldest sealed batches), counted by reason.

Memory batches are addressed by negative handles so the pipeline can keep them in the same in-flight maps
as the spool's positive sequence numbers. A memory batch keeps its bytes and identity until PUBACK; when
the disk works again the spool copies it into its `held` table (`persisted`), so it survives a restart.
Sizes: at the default 20,000 records the queue holds ~1.5 MiB of Python objects (~75 B per small record).
Imported by the spool only when something first goes to memory (Spool._memory(): a write that failed, or
batches an earlier run held): an idle, healthy daemon does not hold its 32 KiB of code (issue 13).
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import replace

from . import wire
from .dataclass_shared import dataclass
from .records import Record


@dataclass
class MemBatch:
    handle: int                 # negative, unique within this process
    sid: int
    seq: int
    payload: bytes
    n_records: int
    created_ms: int
    persisted: bool = False     # a copy is in the spool's `held` table
    drops: dict[str, int] | None = None  # the counters of the last agent.drops record inside, if any


class MemoryQueue:
    def __init__(self, max_records: int) -> None:
        self.max_records = max_records
        self.records: deque[Record] = deque()
        self.batches: dict[int, MemBatch] = {}   # insertion order = age
        self._next_handle = -1
        self.sid = 0
        self._next_seq = 1
        self.dropped_held: list[tuple[int, int]] = []   # (sid, seq) of dropped batches that sit in `held`

    # ---------------------------------------------------------------------------------------- sizes
    @property
    def n_records(self) -> int:
        return len(self.records)

    @property
    def n_batch_records(self) -> int:
        # list() copies under the GIL in one step: other threads (status, verdict) read this while the
        # pipeline thread changes the dict.
        return sum(b.n_records for b in list(self.batches.values()))

    def oldest_wall_ms(self) -> int | None:
        """Wall time of the oldest record held here, sealed or not (read by other threads: copies, no locks)."""
        cands = [b.created_ms for b in list(self.batches.values())[:1]]
        try:
            cands.append(self.records[0].wall_ms)
        except IndexError:
            pass
        return min(cands) if cands else None

    def body_bytes(self) -> int:
        # Only asked for the seal decision; a rough figure is enough (the wire size is checked on sealing).
        return sum(24 + len(r.name) + (8 if not isinstance(r.data, dict) else 16 * len(r.data))
                   for r in self.records)

    # ---------------------------------------------------------------------------------------- records
    def add(self, records: Iterable[Record], *, front: bool = False) -> dict[str, int]:
        """Hold records (front=True puts them back ahead of newer ones); returns what the bound dropped."""
        if front:
            self.records.extendleft(reversed(list(records)))
        else:
            self.records.extend(records)
        return self.bound()

    def take(self, n: int | None = None) -> list[Record]:
        """Remove and return the oldest n unsealed records (all by default), e.g. to write them to disk."""
        if n is None or n >= len(self.records):
            out = list(self.records)
            self.records.clear()
            return out
        return [self.records.popleft() for _ in range(n)]

    def bound(self) -> dict[str, int]:
        excess = self.n_records + self.n_batch_records - self.max_records
        if excess <= 0:
            return {}
        dropped: dict[str, int] = {}
        kept: deque[Record] = deque()
        for r in self.records:
            if excess > 0 and r.kind.evictable_first:
                excess -= 1
                dropped["memory_full.metric"] = dropped.get("memory_full.metric", 0) + 1
            else:
                kept.append(r)
        while excess > 0 and kept:
            kept.popleft()
            excess -= 1
            dropped["memory_full.event"] = dropped.get("memory_full.event", 0) + 1
        self.records = kept
        while excess > 0 and self.batches:
            handle = next(iter(self.batches))
            b = self.batches.pop(handle)
            if b.persisted:
                self.dropped_held.append((b.sid, b.seq))
            excess -= b.n_records
            dropped["memory_full.batch_records"] = dropped.get("memory_full.batch_records", 0) + b.n_records
        return dropped

    # ---------------------------------------------------------------------------------------- batches
    def seal(self, make_id: Callable[[str, int], wire.BatchId], max_bytes: int, *, max_records: int,
             compress: str, avoid_sid: int = 0) -> tuple[MemBatch | None, int]:
        """Seal the oldest records (one boot, one sync state) into a memory batch of ≤ max_bytes.
        Returns (batch or None, records dropped as oversize)."""
        oversize = 0
        while self.records:
            first = self.records[0]
            take: list[Record] = []
            budget = 0
            for r in self.records:
                budget += 48 + len(r.name)
                if r.boot != first.boot or r.synced != first.synced or len(take) >= max_records \
                        or (take and budget > max_bytes * 2):
                    break
                take.append(r)
            while not self.sid or self.sid == avoid_sid:
                self.sid = secrets.randbits(63)
            bid = replace(make_id(first.boot, self._next_seq), sid=self.sid, seq=self._next_seq)
            payload = wire.encode_batch(bid, take, compress=compress)
            while len(payload) > max_bytes and len(take) > 1:
                take = take[: len(take) // 2]
                payload = wire.encode_batch(bid, take, compress=compress)
            if len(payload) > max_bytes:
                self.records.popleft()      # one record no batch can carry: it would block the queue
                oversize += 1
                continue
            for _ in take:
                self.records.popleft()
            b = MemBatch(self._next_handle, self.sid, self._next_seq, payload, len(take), int(time.time() * 1000),
                         drops=next((dict(r.data) for r in reversed(take)
                                     if r.name == "agent.drops" and isinstance(r.data, dict)), None))
            self._next_handle -= 1
            self._next_seq += 1
            self.batches[b.handle] = b
            return b, oversize
        return None, oversize

    def adopt(self, sid: int, seq: int, payload: bytes, n_records: int, created_ms: int) -> MemBatch:
        """Take over a batch sealed in memory by an earlier run and kept in the `held` table."""
        b = MemBatch(self._next_handle, sid, seq, payload, n_records, created_ms, persisted=True)
        self._next_handle -= 1
        self.batches[b.handle] = b
        return b

    def unseal(self, handle: int) -> bool:
        """Put a batch's records back at the front (the broker refused its size); False if unknown."""
        b = self.batches.pop(handle, None)
        if b is None:
            return False
        batch = wire.decode(b.payload, wire.Limits(max_payload=1 << 30, max_inflated=1 << 30))
        assert isinstance(batch, wire.Batch)
        self.records.extendleft(reversed(batch.records))
        return True
