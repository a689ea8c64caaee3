"""Which records start a snapshot, and how often (pure; clocks passed in).

A trigger is either built in (`[blackbox] families` — an episode BEGIN of that family — and `events`) or comes
from a campaign. Rate limits are per key: the record's family for built-in triggers, the campaign id for
campaigns; a limited trigger is counted as suppressed, never queued.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import field
from typing import Any

from ..dataclass_shared import dataclass
from ..records import Kind, Record

OPS = ("eq", "ne", "lt", "le", "gt", "ge", "in", "contains")


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: Any

    def holds(self, fields: Mapping[str, Any]) -> bool:
        if self.field not in fields:
            return False
        v = fields[self.field]
        want = self.value
        if self.op == "eq":
            return bool(v == want)
        if self.op == "ne":
            return bool(v != want)
        if self.op == "in":
            return v in want
        if self.op == "contains":
            # `5 in "text"` raises: a backend's condition must never break the observer (and with it every
            # other trigger of the batch), so a number is only looked for in a list.
            if isinstance(v, str):
                return isinstance(want, str) and want in v
            return isinstance(v, list) and want in v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
            return False
        return bool({"lt": v < want, "le": v <= want, "gt": v > want, "ge": v >= want}[self.op])


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


def onset(r: Record, pre_s: float) -> float:
    """When the trigger's problem began, on the monotonic clock in seconds: a BEGIN is emitted when the
    problem is confirmed, which can be seconds after it started (`detected_after_s`, or the link probe's
    back-dated wall-clock `start`). The snapshot is centred on the start, at most `pre_s` back. An END (a
    campaign's `kinds: ["end"]`) is taken where it is: it carries its episode's `start` too, and moving T
    back to it would leave `post_s` covering the episode instead of what followed its end."""
    t = r.mono_ms / 1000
    if r.kind is Kind.END:
        return t
    fields = r.data if isinstance(r.data, Mapping) else {}
    back = 0.0
    det = fields.get("detected_after_s")
    start = fields.get("start")
    if isinstance(det, (int, float)) and not isinstance(det, bool):
        back = float(det)
    elif isinstance(start, (int, float)) and not isinstance(start, bool):
        back = r.wall_ms / 1000 - float(start)
    if not math.isfinite(back):
        back = 0.0
    return t - min(max(0.0, back), pre_s)
