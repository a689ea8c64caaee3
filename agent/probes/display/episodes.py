"""Turning a stream of verdicts into episode BEGIN/END field sets. Pure: the probe stamps the records.

The episode's start is back-dated to when its evidence began (the last time the region moved, the last
heartbeat, the touch that got no answer), not when the rule fired, so `duration_s` measures the freeze the
user saw. It ends when the next verdict is inactive, i.e. at the first sample that saw the screen move again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import field
from typing import Any

from ...dataclass_shared import dataclass
from .rules import UNKNOWN, Verdict, more_specific


@dataclass
class OpenEpisode:
    start: float
    start_wall: float
    detected: float
    cause: str
    causes: list[str]
    evidence: dict[str, dict[str, Any]] = field(default_factory=dict)
    signals: set[str] = field(default_factory=set)
    explanation: str = ""
    episode: int | None = None


@dataclass(frozen=True)
class Transition:
    kind: str                   # "begin" or "end"
    fields: dict[str, Any]
    open: OpenEpisode


def _evidence_key(fields: dict[str, Any]) -> str:
    return f"{fields['kind']}:{fields.get('region') or fields.get('process') or fields.get('device') or ''}"


class EpisodeMachine:
    def __init__(self, name: str, explain: Callable[[Verdict], str] | None = None) -> None:
        self.name = name
        self.open: OpenEpisode | None = None
        self._explain = explain

    def _absorb(self, ep: OpenEpisode, v: Verdict, now: float) -> None:
        for e in v.evidence:
            f = e.fields(now)
            # The first sighting keeps `since`; later ones refresh how long it has lasted.
            ep.evidence[_evidence_key(f)] = f
            ep.signals.add(e.signal)
        if v.cause and v.cause not in ep.causes:
            ep.causes.append(v.cause)
        # Only a more specific cause replaces the current one (rules.FREEZE_CAUSE_ORDER): a GPU hang logged 10 s
        # into the freeze turns "unknown" into "gpu_hang", but a deadlocked loop that resumes (frames_stalled
        # for a moment before the next frame) does not turn "hmi_deadlock" into "render_stall".
        if more_specific(v.cause, ep.cause):
            ep.cause = v.cause
        if self._explain:
            why = self._explain(v)
            if not ep.explanation or more_specific(why, ep.explanation):
                ep.explanation = why

    def _common(self, ep: OpenEpisode) -> dict[str, Any]:
        out = {"cause": ep.cause, "start": round(ep.start_wall, 3),
               "evidence": list(ep.evidence.values()), "signals": sorted(ep.signals)}
        if ep.explanation:
            out["explanation"] = ep.explanation
        return out

    def step(self, v: Verdict, now: float, wall: float) -> Transition | None:
        ep = self.open
        if v.active:
            if ep is None:
                start = v.since if v.since is not None else now
                ep = OpenEpisode(start, wall - (now - start), now, v.cause or UNKNOWN, [])
                self._absorb(ep, v, now)
                self.open = ep
                fields = self._common(ep)
                fields["detected_after_s"] = round(now - start, 2)
                return Transition("begin", fields, ep)
            self._absorb(ep, v, now)
            return None
        if ep is not None:
            return self.close(now, wall, "recovered")
        return None

    def close(self, now: float, wall: float, ended_by: str) -> Transition | None:
        ep = self.open
        if ep is None:
            return None
        self.open = None
        fields = self._common(ep)
        fields.update({"end": round(wall, 3), "duration_s": round(now - ep.start, 2), "ended_by": ended_by,
                       "causes": ep.causes})
        return Transition("end", fields, ep)
