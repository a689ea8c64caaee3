"""The display probe's DRM reads on a FakeClock: the plane's fb_id on the flip schedule, the CRTC/connector state
with the sysfs readings (or on their schedule where there are none), and a failed read taking the drm source down
from either path. The card is a stand-in with KmsWatch's interface; the real one is tested in the qemu guest."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.probe import ProbeContext
from agent.probes.display import Config, DisplayProbe
from agent.probes.display.rules import ConnectorSignal
from agent.records import Record
from agent.schema import build


class FakeKms:
    """KmsWatch's interface, counting its reads; `fail` makes the next read raise as a vanished card does."""

    def __init__(self) -> None:
        self.plane_id, self.fb_id, self.flip_at, self.flips = 31, 7, 0.0, 0
        self.reads = {"flip": 0, "connectors": 0}
        self.fail = ""
        self.opens = 0

    def open(self) -> None:
        self.opens += 1

    def close(self) -> None:
        pass

    def _read(self, what: str) -> None:
        self.reads[what] += 1
        if self.fail == what:
            self.fail = ""
            raise OSError("ENODEV: card gone")

    def poll_flip(self, now: float) -> bool:
        self._read("flip")
        return False

    def connectors(self, now: float, since: dict[str, tuple[bool, float]]) -> tuple[ConnectorSignal, ...]:
        self._read("connectors")
        return (ConnectorSignal("drm:card0:33", True, 0.0, {"connector": "drm:card0:33"}),)


@pytest.fixture
def made() -> Iterator[list[DisplayProbe]]:
    probes: list[DisplayProbe] = []
    yield probes
    for p in probes:
        p.close()


def probe_on(tmp_path: Path, made: list[DisplayProbe], clock: FakeClock, **cfg: Any) -> tuple[DisplayProbe, FakeKms]:
    table = {"enabled": True, "drm_card": str(tmp_path / "card0"), "sysfs_root": str(tmp_path / "sys"),
             "drm_flip_poll_s": 0.1, "sysfs_interval_s": 1.0, "metrics_interval_s": 3600.0, **cfg}
    records: list[Record] = []
    probe = DisplayProbe(build(Config, table, path="probes.display"),
                         ProbeContext(clock=clock, emit=records.append))
    made.append(probe)
    kms = FakeKms()
    probe.kms = kms  # type: ignore[assignment]
    probe.open()
    return probe, kms


def run(probe: DisplayProbe, clock: FakeClock, ticks: int, step: float = 0.1) -> None:
    for _ in range(ticks):
        probe.tick()
        clock.advance(step)


@pytest.mark.parametrize("sysfs", [False, True], ids=["no sysfs: state on its own schedule", "with sysfs"])
def test_flip_every_poll_connector_state_every_sysfs_interval(tmp_path: Path, made: list[DisplayProbe],
                                                              sysfs: bool) -> None:
    clock = FakeClock()
    extra = {"backlight": "panel"} if sysfs else {}
    probe, kms = probe_on(tmp_path, made, clock, **extra)
    run(probe, clock, 30)                                # 3 s at 10 Hz
    assert kms.reads == {"flip": 30, "connectors": 3}
    assert [c.name for c in probe.signals(clock.mono()).connectors] == ["drm:card0:33"]


@pytest.mark.parametrize("failing", ["flip", "connectors"])
@pytest.mark.parametrize("sysfs", [False, True], ids=["no sysfs", "with sysfs"])
def test_a_failed_read_takes_the_drm_source_down_and_forgets_its_connectors(
        tmp_path: Path, made: list[DisplayProbe], failing: str, sysfs: bool) -> None:
    clock = FakeClock()
    probe, kms = probe_on(tmp_path, made, clock, **({"backlight": "panel"} if sysfs else {}))
    run(probe, clock, 5)
    assert probe.signals(clock.mono()).connectors
    kms.fail = failing
    run(probe, clock, 10)                                # the next connector read is due at 1.0 s
    assert probe.status()["sources"]["drm"] == "down: ENODEV: card gone"
    assert probe.counters.snapshot().get("drm_read_failed") == 1
    assert not [c for c in probe.signals(clock.mono()).connectors if c.name.startswith("drm:")]
    reads = dict(kms.reads)
    run(probe, clock, 5)                                 # down: no DRM read until the source is reopened
    assert kms.reads == reads
