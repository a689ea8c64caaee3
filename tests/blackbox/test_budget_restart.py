"""The snapshot budget survives a restart (agent/blackbox/budget_store.py): the hourly cap and each key's
interval within a boot, a campaign's `max_snapshots` total across reboots. Before, every start began afresh."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from agent.blackbox.recorder import BlackBox
from agent.blackbox.settings import BlackboxConfig
from agent.blackbox.triggers import Trigger
from agent.clock import FakeClock
from agent.records import Kind, Record, RecordFactory

CFG = BlackboxConfig(max_per_hour=3, pre_s=1, post_s=0, window_s=5, min_interval_s=600)


class _Sys:
    cpu = 1.0

    def take(self) -> dict[str, object]:
        return {"cpu": 1.0, "mem": 40.0}

    def parse(self, raw: dict[str, object]) -> dict[str, object]:
        return raw


class _Procs:
    def scan(self, now: float, n: int) -> list[list[object]]:
        return []


def _campaign(max_snapshots: int | None = None) -> Trigger:
    return Trigger("campaign:c", ("can.error",), frozenset({Kind.EVENT}), ("system",), 1, 0, 0.0, campaign="c",
                   max_snapshots=max_snapshots)


def _box(clock: FakeClock, path: Path, out: list[Record], campaign: Trigger | None = None) -> BlackBox:
    box = BlackBox(CFG, clock, out.append, system=_Sys(), scanner=_Procs(),  # type: ignore[arg-type]
                   budget_path=path)
    if campaign is not None:
        box.set_campaign_triggers([campaign])
    return box


def _fire(box: BlackBox, clock: FakeClock, name: str = "can.error", kind: Kind = Kind.EVENT) -> None:
    rec = RecordFactory(clock)
    r = rec.event(name, {"bus": "can0"}) if kind is Kind.EVENT else rec.begin(name, {})
    box.observe([r])
    clock.advance(1.0)
    box.step()


def test_a_restart_in_the_same_boot_keeps_the_hourly_cap_and_the_interval(tmp_path: Path) -> None:
    path, clock, out = tmp_path / "blackbox-budget.json", FakeClock(), []
    box = _box(clock, path, out, _campaign())
    for _ in range(5):
        _fire(box, clock)
        clock.advance(60.0)
    assert len(out) == 3 and box.counters.get("suppressed.hourly_cap") == 2
    assert oct(path.stat().st_mode & 0o777) == "0o600"

    again = _box(clock, path, out, _campaign())    # the same boot: its monotonic clock goes on
    _fire(again, clock)
    assert len(out) == 3 and again.counters.get("suppressed.hourly_cap") == 1
    clock.advance(3600.0)
    _fire(again, clock)
    assert len(out) == 4

    # A family's interval too: a display freeze, a restart, another freeze a minute later.
    fam = _box(clock, path, out)
    _fire(fam, clock, "display.freeze", Kind.BEGIN)
    clock.advance(60.0)
    restarted = _box(clock, path, out)
    _fire(restarted, clock, "display.freeze", Kind.BEGIN)
    assert len(out) == 5 and restarted.counters.get("suppressed.family:display") == 1


def test_a_campaign_total_holds_across_a_reboot_and_the_times_do_not(tmp_path: Path) -> None:
    path, out = tmp_path / "blackbox-budget.json", []
    clock = FakeClock(mono=50_000.0)
    box = _box(clock, path, out, _campaign(max_snapshots=2))
    for _ in range(3):
        _fire(box, clock)
    assert len(out) == 2
    rebooted = FakeClock(mono=30.0, boot_id="0" * 31 + "2")    # a new boot: its clock starts again
    after = _box(rebooted, path, out, _campaign(max_snapshots=2))
    _fire(after, rebooted)
    assert len(out) == 2 and after.counters.get("suppressed.campaign:c") == 1
    _fire(after, rebooted, "display.freeze", Kind.BEGIN)        # the hour and the intervals began afresh
    assert len(out) == 3
    assert json.loads(path.read_text())["counts"] == {"campaign:c": 2, "family:display": 1}


def test_a_retired_campaign_is_forgotten_at_the_next_save(tmp_path: Path) -> None:
    path, clock, out = tmp_path / "blackbox-budget.json", FakeClock(), []
    box = _box(clock, path, out, _campaign(max_snapshots=5))
    _fire(box, clock)
    box.set_campaign_triggers([])
    clock.advance(700.0)
    _fire(box, clock, "display.freeze", Kind.BEGIN)
    assert set(json.loads(path.read_text())["counts"]) == {"family:display"}


@pytest.mark.parametrize("body", [b"{not json", b"[]", b'{"v": 9}', b'{"v": 1, "counts": {"campaign:c": "x"}, '
                                  b'"boot": "' + b"0" * 31 + b'1", "taken": ["a", 1e400], "last": 3}'])
def test_an_unreadable_budget_starts_afresh(tmp_path: Path, body: bytes, caplog: pytest.LogCaptureFixture) -> None:
    path, clock, out = tmp_path / "blackbox-budget.json", FakeClock(), []
    path.write_bytes(body)
    with caplog.at_level(logging.ERROR, "icvq.blackbox"):
        box = _box(clock, path, out, _campaign(max_snapshots=1))
    _fire(box, clock)
    assert len(out) == 1


def test_a_budget_that_cannot_be_written_still_holds_for_the_run(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        blocker = tmp_path / "a-file"            # root writes anywhere: a file where the directory should be
        blocker.write_text("")
        path = blocker / "blackbox-budget.json"
    else:
        (tmp_path / "ro").mkdir(mode=0o500)
        path = tmp_path / "ro" / "blackbox-budget.json"
    clock, out = FakeClock(), []
    box = _box(clock, path, out, _campaign(max_snapshots=1))
    _fire(box, clock)
    _fire(box, clock)
    assert len(out) == 1 and box.counters.get("budget_unsaved") == 1
