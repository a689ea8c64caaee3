"""What probes produce: events, episode begin/end pairs, metric samples and the agent's own health counters.

Every record carries wall time AND boot-relative monotonic time with the boot id and whether the wall clock
was synchronised, so the backend can re-anchor records stamped while the car's clock was still wrong.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import field
from enum import IntEnum
from typing import Any

from .clock import Clock
from .dataclass_shared import dataclass

Data = int | float | dict[str, Any]


class Kind(IntEnum):
    """Wire values are part of the contract (docs/wire-format.md)."""

    EVENT = 0
    BEGIN = 1
    END = 2
    METRIC = 3
    HEALTH = 4
    SNAPSHOT = 5  # black-box context around a trigger (agent/blackbox): kept before metrics, shed before events

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def evictable_first(self) -> bool:
        """Periodic samples are regenerated every interval; events happen once. When the spool is full the
        periodic ones go first."""
        return self in (Kind.METRIC, Kind.HEALTH)


@dataclass(frozen=True, slots=True)
class Record:
    kind: Kind
    name: str
    wall_ms: int
    mono_ms: int
    boot: str
    synced: bool
    data: Data = field(default_factory=dict)
    episode: int | None = None

    @property
    def priority(self) -> int:
        """Spool eviction class, lowest first: metrics/health 0, snapshots 1, events and episodes 2."""
        if self.kind.evictable_first:
            return 0
        return 1 if self.kind is Kind.SNAPSHOT else 2


def new_episode_id() -> int:
    # 63 random bits: unique per device for the life of the fleet without any persisted counter.
    return secrets.randbits(63)


class RecordFactory:
    """Stamps records with one clock so probes never read time themselves."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def make(self, kind: Kind, name: str, data: Data, episode: int | None = None) -> Record:
        c = self.clock
        return Record(kind, name, int(c.wall() * 1000), int(c.mono() * 1000), c.boot_id, c.synced(),
                      data, episode)

    def metric(self, name: str, value: int | float | Mapping[str, Any]) -> Record:
        return self.make(Kind.METRIC, name, value if isinstance(value, (int, float)) else dict(value))

    def health(self, name: str, value: int | float | Mapping[str, Any]) -> Record:
        return self.make(Kind.HEALTH, name, value if isinstance(value, (int, float)) else dict(value))

    def event(self, name: str, fields: Mapping[str, Any] | None = None) -> Record:
        return self.make(Kind.EVENT, name, dict(fields or {}))

    def begin(self, name: str, fields: Mapping[str, Any] | None = None,
              episode: int | None = None) -> Record:
        return self.make(Kind.BEGIN, name, dict(fields or {}), episode or new_episode_id())

    def snapshot(self, name: str, data: Mapping[str, Any], *, of: Record, mono_ms: int) -> Record:
        """A black-box snapshot about record `of`, stamped at mono_ms on `of`'s boot and clock state (the
        trigger's onset, which lies before `of` was made)."""
        return Record(Kind.SNAPSHOT, name, of.wall_ms - (of.mono_ms - mono_ms), mono_ms, of.boot, of.synced,
                      dict(data), of.episode)

    def end(self, name: str, episode: int, fields: Mapping[str, Any] | None = None) -> Record:
        return self.make(Kind.END, name, dict(fields or {}), episode)
