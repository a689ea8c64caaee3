"""Shared by the display rule tests: a timeline of signal changes fed through a rule and an EpisodeMachine."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from agent.probes.display.episodes import EpisodeMachine
from agent.probes.display.rules import Signals, Thresholds, black_explanation, black_verdict, freeze_verdict

Timeline = list[tuple[float, dict[str, Any]]]
Transitions = list[tuple[str, float, str, float | None]]


def run(timeline: Timeline, which: str, base: dict[str, Any] | None, th: Thresholds) -> Transitions:
    """Feed [(t, changes to the signals), ...] through the rule and an EpisodeMachine; return
    (kind, t, cause, duration_s) of each transition."""
    sig = Signals(now=0.0, **(base or {}))
    verdict = freeze_verdict if which == "freeze" else black_verdict
    m = EpisodeMachine(f"display.{which}", black_explanation if which == "black" else None)
    out: Transitions = []
    for t, change in timeline:
        sig = replace(sig, now=t, **change)
        tr = m.step(verdict(sig, th), t, 10_000.0 + t)
        if tr:
            tr.open.episode = 1
            out.append((tr.kind, t, tr.fields["cause"], tr.fields.get("duration_s")))
    return out
