"""Where a snapshot's T lies for each kind of trigger record (agent/blackbox/snapshot.onset, pure).

A BEGIN is confirmed after its problem began, so T moves back to the start (at most pre_s). An END carries
its episode's start as well; a campaign with `kinds: ["end"]` asks for what happened around the end (the
recovery), so T stays at the END: found in an acceptance run, where a 10 s freeze's END snapshot with
pre 5 / post 5 covered the last 10 s of the freeze and nothing after it. The report's context plot says
which of the two its dashed line is. Campaign conditions are total: a backend's `contains 5` on a text field
raised inside the pipeline's observer, so no trigger of that batch was seen.
"""

from __future__ import annotations

from typing import Any

import pytest

from agent.blackbox.snapshot import onset
from agent.records import Kind, Record

WALL_MS, MONO_MS = 1_800_000_000_000, 500_000


def _rec(kind: Kind, fields: dict[str, Any]) -> Record:
    return Record(kind, "display.freeze", WALL_MS, MONO_MS, "boot", True, fields)


@pytest.mark.parametrize(("kind", "fields", "pre_s", "back_s"), [
    (Kind.BEGIN, {"detected_after_s": 3.0}, 30.0, 3.0),            # confirmed 3 s after it began
    (Kind.BEGIN, {"start": WALL_MS / 1000 - 5.0}, 30.0, 5.0),        # back-dated wall-clock start
    (Kind.BEGIN, {"detected_after_s": 45.0}, 30.0, 30.0),          # never more than pre_s back
    (Kind.BEGIN, {"detected_after_s": -2.0}, 30.0, 0.0),           # never forward
    (Kind.BEGIN, {"detected_after_s": float("nan")}, 30.0, 0.0),
    (Kind.BEGIN, {}, 30.0, 0.0),
    (Kind.EVENT, {}, 30.0, 0.0),
    (Kind.END, {"start": WALL_MS / 1000 - 10.0, "duration_s": 10.0}, 5.0, 0.0),  # at the end itself
    (Kind.END, {"start": WALL_MS / 1000 - 2.0}, 30.0, 0.0),
])
def test_onset_by_kind(kind: Kind, fields: dict[str, Any], pre_s: float, back_s: float) -> None:
    assert onset(_rec(kind, fields), pre_s) == pytest.approx(MONO_MS / 1000 - back_s)


@pytest.mark.parametrize(("kind", "at"), [("begin", "start"), ("end", "end")])
def test_report_names_the_time_the_plot_is_centred_on(kind: str, at: str) -> None:
    from tools.ingest.report_context import episode_block

    snap = {"trigger": "display.freeze", "trigger_kind": kind, "pre_s": 5, "post_s": 5,
            "system": {"t": [0, 5000, 10000], "cpu": [10, 20, 30], "mem": [40, 41, 42]}}
    html = episode_block("VIN1", "hu", 7, 1_800_000_000.0, snap, "display.freeze", {}, 10.0)
    assert f"<p class=small>{at} 2027-01-15" in html
    assert f"episode&#x27;s {at}" in html or f"episode's {at}" in html


@pytest.mark.parametrize(("op", "value", "fields", "holds"), [
    ("contains", "stop", {"cause": "hmi_stopped"}, True),
    ("contains", 5, {"cause": "hmi_stopped"}, False),         # raised TypeError inside the pipeline's observer
    ("contains", None, {"cause": "hmi_stopped"}, False),
    ("contains", "datapath", {"lost": ["datapath"]}, True),
    ("contains", 5, {"ids": [4, 5]}, True),
    ("contains", "x", {"n": 3}, False),
    ("in", ("a", "b"), {"sensor": ["a"]}, False),             # a list field against an `in` list: no match
    ("gt", 3, {"n": "7"}, False),
    ("ge", 3, {"n": 3}, True),
    ("eq", 1, {}, False),
])
def test_conditions_are_total(op: str, value: object, fields: dict[str, Any], holds: bool) -> None:
    """Campaign conditions (agent/blackbox/triggers.Condition) hold or not for any field value: never raise."""
    from agent.blackbox.campaign import Condition

    assert Condition(next(iter(fields), "f"), op, value).holds(fields) is holds
