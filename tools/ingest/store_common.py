"""What the SQLite and PostgreSQL stores share: the `Store` protocol, `WriteResult`, the column lists of the
tables, the settling of a group's batches against the stored ones and the episode-row split.

A module of its own so that store.py (which opens either store) and store_pg.py both depend on it and not on
each other (tests/backend/test_ingest_imports.py keeps tools/ingest free of import cycles).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from . import rows as R
from .rows import Message

BATCH_COLS = ("vehicle, device, sid, boot, seq, fleet, received, n_records, synced, t_first, t_last, mono_first, "
              "mono_last, digest")
RECORD_COLS = "vehicle, device, sid, seq, idx, t, mono, boot, synced, kind, name, value, fields, episode"
STATUS_COLS = "vehicle, device, kind, t, boot, fields, received"
SOFTWARE_COLS = "vehicle, device, boot, component, version, t"
DEAD_COLS = "received, topic, reason, detail, size, head"


@dataclass(frozen=True)
class WriteResult:
    stored: int = 0       # new batches
    duplicates: int = 0   # batches already stored (redelivery)
    records: int = 0      # records of the new batches
    status: int = 0
    dead: int = 0         # dead letters, conflicts included
    conflicts: int = 0    # a stored identity arrived with other bytes (dead letter `conflict`, first kept)
    status_replays: int = 0  # status messages stored before (retained ones come again on every subscribe)


class Store(Protocol):
    def write(self, msgs: Sequence[Message]) -> WriteResult: ...

    def is_transient(self, e: BaseException) -> bool: ...

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]: ...

    def counts(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def split_episodes(eps: Iterable[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(begin rows, end rows), each unique per episode key (an upsert may not touch a row twice)."""
    begins: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    ends: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for v, d, ep, boot, name, is_end, t, mono, dur, fields in eps:
        if is_end:
            ends[(v, d, ep)] = (v, d, ep, boot, name, t, mono, dur, fields)
        else:
            begins[(v, d, ep)] = (v, d, ep, boot, name, t, mono, fields)
    return list(begins.values()), list(ends.values())


def settle_batches(rows: R.Rows, batches: Sequence[tuple[Any, ...]], fresh: set[R.BatchKey],
                   stored: Mapping[R.BatchKey, str | None]) -> tuple[int, int]:
    """(duplicates, conflicts) of a group's batches (R.settle each, in the order given: key order): `fresh` are
    the ones this transaction inserted, `stored` the digests the store holds for the others."""
    dups = clashes = 0
    for b in batches:
        key = b[:5]
        d, c = R.settle(rows, key, stored.get(key), key in fresh)
        dups, clashes = dups + d, clashes + c
    return dups, clashes
