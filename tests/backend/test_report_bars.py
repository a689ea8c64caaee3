"""The rising-risk bars show the CUSUM statistic now, not a past alarm padded to the threshold (issue 15)."""

from __future__ import annotations

from typing import Any

from tools.ingest.report import risk_bar


def _risk(score: float, alarms: list[float]) -> dict[str, Any]:
    return {"vehicle": "V1", "device": "hu", "family": "freeze", "component": "hmi", "score": score,
            "alarms": alarms}


def test_cleared_alarm_is_a_short_red_bar() -> None:
    label, value, red = risk_bar(_risk(0.0, [1.7e9]))
    assert value == 0.0 and red and label.endswith("(cleared)")


def test_alarm_now_and_never_alarmed() -> None:
    assert risk_bar(_risk(1.4, [1.7e9]))[1:] == (1.4, True)
    assert not risk_bar(_risk(1.4, [1.7e9]))[0].endswith("(cleared)")
    assert risk_bar(_risk(0.6, []))[1:] == (0.6, False)
