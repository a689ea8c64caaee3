"""Which records start a snapshot, and how often (pure; clocks passed in).

A trigger is either built in (`[blackbox] families` — an episode BEGIN of that family — and `events`) or comes
from a campaign. Rate limits are per key: the record's family for built-in triggers, the campaign id for
campaigns; a limited trigger is counted as suppressed, never queued.

Only what the idle recorder runs for every record is here (issue 13: idle RSS): field conditions (`Condition`)
come only with campaigns and live in campaign.py; a trigger's onset in time, in snapshot.py, with the rest of
what a match sets off.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import field
from typing import TYPE_CHECKING

from ..dataclass_shared import dataclass
from ..records import Kind, Record

if TYPE_CHECKING:
    from .campaign import Condition


@dataclass(frozen=True)
class Trigger:
    key: str                         # rate-limit key: "family:<f>" or "campaign:<id>"
    names: tuple[str, ...]           # exact names, or families ("display" takes "display.freeze")
    kinds: frozenset[Kind]
    capture: tuple[str, ...]
    pre_s: float
    post_s: float
    min_interval_s: float
    where: tuple[Condition, ...] = ()
    campaign: str | None = None
    max_snapshots: int | None = None

    def matches(self, r: Record) -> bool:
        if r.kind not in self.kinds:
            return False
        if not any(r.name == n or r.name.startswith(n + ".") for n in self.names):
            return False
        fields = r.data if isinstance(r.data, Mapping) else {}
        return all(c.holds(fields) for c in self.where)


def family(name: str) -> str:
    return name.split(".", 1)[0]


def builtin(families: Sequence[str], events: Sequence[str], capture: Sequence[str], pre_s: float,
            post_s: float, min_interval_s: float) -> list[Trigger]:
    out = [Trigger(f"family:{f}", (f,), frozenset({Kind.BEGIN}), tuple(capture), pre_s, post_s, min_interval_s)
           for f in families]
    out += [Trigger(f"family:{family(e)}", (e,), frozenset({Kind.EVENT}), tuple(capture), pre_s, post_s,
                    min_interval_s) for e in events]
    return out


@dataclass
class RateLimiter:
    last: dict[str, float] = field(default_factory=dict)
    taken: dict[str, int] = field(default_factory=dict)

    def allow(self, t: Trigger, now: float) -> bool:
        prev = self.last.get(t.key)
        if (prev is not None and now - prev < t.min_interval_s) or \
                (t.max_snapshots is not None and self.taken.get(t.key, 0) >= t.max_snapshots):
            return False
        self.last[t.key] = now
        self.taken[t.key] = self.taken.get(t.key, 0) + 1
        return True
