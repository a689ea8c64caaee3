"""The `context` row of `icvq status` names each campaign's window: a scheduled one says when it starts
(it read "scheduled until <end>", which looks like a start date)."""

from __future__ import annotations

import time

from agent.blackbox.campaign import summary, validate
from agent.fieldcli.status import _blackbox

NOW = 1_800_000_000.0


def _t(x: float | None) -> str:
    return "-" if x is None else time.strftime("%H:%M", time.gmtime(x))


def test_scheduled_campaign_shows_its_start_and_an_active_one_its_end() -> None:
    doc = {"id": "later", "trigger": {"family": "display"}, "start": NOW + 3600, "end": NOW + 7200}
    camps = [summary(validate(doc, window_s=60, now_wall=NOW), NOW),
             summary(validate({**doc, "id": "now", "start": NOW - 60}, window_s=60, now_wall=NOW), NOW)]
    row = _blackbox({"enabled": True, "ring": {"bytes": 1024}, "counters": {}, "campaigns": camps}, _t)
    assert f"later (scheduled from {_t(NOW + 3600)} until {_t(NOW + 7200)})" in row, row
    assert f"now (active until {_t(NOW + 7200)})" in row, row
