"""The real probe thread on a python-can virtual bus: a simulated FORD radar and an E2E-protected sensor."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import can
import pytest
from can.interfaces.virtual import VirtualBus
from canhelp import FORD, VSS_FRONT, agent_config, can_section, radar_frame

from agent.clock import SystemClock
from agent.probe import ProbeContext
from agent.probes.can import build
from agent.probes.can.e2e import E2ESpec, protect
from agent.records import Record

P01 = E2ESpec("P01", 0x0321)


def by_name(recs: list[Record], name: str, kind: str | None = None) -> list[Record]:
    return [r for r in recs if r.name == name and (kind is None or r.kind.label == kind)]


class Sender:
    """The test's side of the bus; every frame it sends is remembered."""

    def __init__(self, channel: str) -> None:
        self.bus = can.Bus(interface="virtual", channel=channel, receive_own_messages=False)
        self.sent: list[can.Message] = []

    def send(self, arb: int, data: bytes, **kw: Any) -> None:
        msg = can.Message(arbitration_id=arb, data=data, is_extended_id=False, **kw)
        self.bus.send(msg)
        self.sent.append(msg)


@pytest.fixture
def channel() -> Iterator[str]:
    yield f"icvq-test-{uuid.uuid4().hex[:8]}"


def run_scenario(channel: str, sender: Sender) -> None:
    t0 = time.monotonic()
    ctr = 0
    next_radar = next_e2e = 0.0
    specials_done: set[str] = set()
    while (el := time.monotonic() - t0) < 3.6:
        silent = 1.0 <= el < 2.0
        if el >= next_radar:
            next_radar += 0.03
            if not silent:
                sender.send(0x101, radar_frame(blocked=int(2.4 <= el < 3.0)))
        if el >= next_e2e:
            next_e2e += 0.02
            ctr += 1
            if el >= 0.5 and "skip" not in specials_done:
                ctr += 2  # two frames never sent: the alive counter jumps
                specials_done.add("skip")
            frame = protect(P01, bytes([0, 0, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66]), ctr % 15)
            if el >= 0.7 and "crc" not in specials_done:
                frame = frame[:4] + bytes([frame[4] ^ 0x08]) + frame[5:]
                specials_done.add("crc")
            sender.send(0x7A0, frame)
        if el >= 0.3 and "bad" not in specials_done:
            specials_done.add("bad")
            sender.send(0x101, radar_frame()[:6])  # wrong DLC
            sender.send(0x101, bytes(12), is_fd=True)  # CAN FD on a classic bus
            sender.send(0x555, bytes(8))  # an id in no DBC and no sensor
            sender.send(0x40, bytes(8), is_error_frame=True)  # bus-off error frame
        if el >= 2.2 and "restart" not in specials_done:
            specials_done.add("restart")
            sender.send(0x100, bytes(8), is_error_frame=True)  # controller restarted
        time.sleep(0.004)


def test_radar_and_e2e_sensor_on_a_virtual_bus(channel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    senders: list[str] = []
    real_send = VirtualBus.send

    def spy(self: Any, msg: can.Message, timeout: float | None = None) -> None:
        senders.append(threading.current_thread().name)
        real_send(self, msg, timeout)

    monkeypatch.setattr(VirtualBus, "send", spy)
    cfg = agent_config(can_section(
        [{"name": "radar", "interface": "virtual", "channel": channel, "dbc": FORD}],
        # Timeouts of 0.5-0.6 s: a starved test thread on a loaded host must not look like a silent sensor.
        [{"name": "mrr", "bus": "radar", "message": "MRR_Status_Radar", "timeout_ms": 600,
          "status": [{"signal": "CAN_BLOCKAGE_MNR", "fault_when": "== 'Radar Blockage'", "vss": VSS_FRONT}]},
         {"name": "cam", "bus": "radar", "id": 0x7A0, "cycle_ms": 20, "length": 8, "timeout_ms": 500,
          "e2e": {"profile": "P01", "data_id": 0x0321}}],
        interval_s=1.0, read_interval_ms=20)).probes["can"]
    recs: list[Record] = []
    listener = can.Bus(interface="virtual", channel=channel, receive_own_messages=False)
    sender = Sender(channel)
    [probe] = build(cfg, ProbeContext(clock=SystemClock(), emit=recs.append))
    radar_frame(), radar_frame(blocked=1)  # encode once before the clock starts
    probe.start()
    try:
        run_scenario(channel, sender)
        scenario_end_ms = SystemClock().mono() * 1000
        time.sleep(1.1)  # one more window; the sensors then fall silent, which is not asserted
    finally:
        probe.stop()
        seen = []
        while (m := listener.recv(0)) is not None:
            seen.append(m)
        listener.shutdown()
        sender.bus.shutdown()

    # Listen-only: the bus carried exactly what the test sent, and only the test's thread ever sent.
    assert len(seen) == len(sender.sent)
    assert set(senders) == {threading.current_thread().name}

    # The silent second is one episode of ~1 s. (A test thread starved by a heavily loaded host is silence on
    # the bus too and may add episodes of its own; those are not what this asserts.)
    timeouts = [r for r in by_name(recs, "can.timeout") if r.mono_ms < scenario_end_ms and r.data["sensor"] == "mrr"]
    ends = {r.episode: r for r in timeouts if r.kind.label == "end"}
    silent = [(b, ends[b.episode]) for b in timeouts if b.kind.label == "begin" and b.episode in ends
              and abs(ends[b.episode].data["duration_s"] - 1.0) <= 0.15]
    assert len(silent) == 1, [(r.kind.label, r.data) for r in timeouts]
    assert silent[0][0].data["silent_s"] == pytest.approx(0.6, abs=0.15)

    faults = by_name(recs, "sensor.fault")
    assert [r.kind.label for r in faults] == ["begin", "end"]
    assert faults[0].data["vss"] == VSS_FRONT and faults[0].data["label"] == "Radar Blockage"
    assert faults[1].data["duration_s"] == pytest.approx(0.6, abs=0.15)

    counter = by_name(recs, "can.counter")
    assert sum(r.data["jumps"] for r in counter) == 1 and sum(r.data["lost"] for r in counter) == 2
    crc = by_name(recs, "can.crc")
    assert sum(r.data["failures"] for r in crc) == 1 and crc[0].data["sensor"] == "cam"

    assert [r.kind.label for r in by_name(recs, "can.bus_off")] == ["begin", "end"]
    assert sum(r.data["frames"] for r in by_name(recs, "can.error")) == 2

    st = probe.status()
    assert st["state"] == "ok"
    assert st["counters"]["bad_length"] == 1 and st["counters"]["fd_on_classic"] == 1
    bus_metrics = by_name(recs, "can.bus", "metric")
    assert sum(r.data["other_frames"] for r in bus_metrics) == 1
    assert max(r.data["frames_s"] for r in bus_metrics) > 60
    sensor_metrics = [r.data for r in by_name(recs, "can.sensor") if r.data["sensor"] == "cam"]
    assert max(d["frames"] for d in sensor_metrics) >= 40
    # The sender here is a Python thread, so only plausibility: the period is the 20 ms cycle.
    assert any(10 <= d.get("period_p50_ms", 0) <= 40 for d in sensor_metrics)


def test_a_missing_bus_degrades_and_recovers(channel: str) -> None:
    """A socketcan interface that does not exist (the host has no AF_CAN at all) must not crash the probe;
    the python-can bus beside it keeps working."""
    cfg = agent_config(can_section(
        [{"name": "dead", "interface": "socketcan", "channel": "nosuchcan0"},
         {"name": "radar", "interface": "virtual", "channel": channel, "dbc": FORD}],
        [{"name": "mrr", "bus": "radar", "message": "MRR_Status_Radar", "timeout_ms": 5000}],
        interval_s=0.5)).probes["can"]
    recs: list[Record] = []
    [probe] = build(cfg, ProbeContext(clock=SystemClock(), emit=recs.append))
    sender = Sender(channel)
    probe.start()
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.8:
            sender.send(0x101, radar_frame())
            time.sleep(0.03)
    finally:
        probe.stop()
        sender.bus.shutdown()
    st = probe.status()
    assert st["buses"]["dead"]["open"] is False and st["buses"]["dead"]["error"]
    assert st["counters"]["bus_open_failures"] >= 1
    assert not by_name(recs, "can.timeout")
    assert any(r.data["frames"] > 10 for r in by_name(recs, "can.sensor"))
