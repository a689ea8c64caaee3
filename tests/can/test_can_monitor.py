"""Sensor and bus monitors fed synthetic frame sequences with explicit times (no threads, no sockets)."""

from __future__ import annotations

from typing import Any

import pytest
from canhelp import FORD, VSS_FRONT, agent_config, can_section, radar_frame

from agent.clock import FakeClock
from agent.probes.can.bcm_counts import parse_bcm_proc
from agent.probes.can.bus_monitor import BusMonitor
from agent.probes.can.dbc import resolve
from agent.probes.can.e2e import E2ESpec, protect
from agent.probes.can.monitor import SensorMonitor
from agent.records import Kind, Record, RecordFactory

P01 = E2ESpec("P01", 0x0BEE)


def monitor(sensor: dict[str, Any], bus: dict[str, Any] | None = None) -> tuple[SensorMonitor, list[Record]]:
    b = bus or {"name": "radar", "interface": "virtual", "dbc": FORD}
    [spec] = resolve(agent_config(can_section([b], [{"bus": b["name"], **sensor}])).probes["can"])
    out: list[Record] = []
    return SensorMonitor(spec, RecordFactory(FakeClock()), out, now=0.0), out


def ford(**kw: Any) -> dict[str, Any]:
    return {"name": "mrr", "message": "MRR_Status_Radar", **kw}


def plain(**kw: Any) -> dict[str, Any]:
    return {"name": "s", "id": 0x120, "cycle_ms": 10, "length": 8, **kw}


BARE = {"name": "b", "interface": "virtual"}


def names(out: list[Record]) -> list[tuple[str, str]]:
    return [(r.kind.label, r.name) for r in out]


def test_a_silent_second_is_one_timeout_episode() -> None:
    m, out = monitor(ford())
    t = 0.0
    while t < 0.3:
        m.on_frame(t, radar_frame())
        m.check_timeout(t)
        t += 0.03
    last = t - 0.03
    while t < last + 1.0:
        m.check_timeout(t)
        t += 0.01
    m.on_frame(last + 1.0, radar_frame())
    m.check_timeout(last + 1.0)
    assert names(out) == [("begin", "can.timeout"), ("end", "can.timeout")]
    begin, end = out
    assert begin.episode == end.episode
    assert begin.data["silent_s"] == pytest.approx(0.3, abs=0.011) and not begin.data["never_seen"]
    assert end.data["duration_s"] == pytest.approx(1.0) and end.data["missed_cycles"] == 32
    m.close_window(2.0)
    metric = next(r for r in out if r.name == "can.sensor")
    assert metric.data["timeouts"] == 1 and metric.data["jitter_p99_ms"] < 1.0  # the gap is not jitter


def test_a_sensor_never_seen_times_out_from_start() -> None:
    m, out = monitor(ford())
    m.check_timeout(0.29)
    assert out == []
    m.check_timeout(0.31)
    assert out[0].name == "can.timeout" and out[0].data["never_seen"] is True
    assert m.deadline() is None  # no second episode while the first is open


def counter_frame(c: int) -> bytes:
    return bytes([0x00, c & 0x0F]) + bytes(6)


def test_counter_jumps_and_repeats_are_counted_per_window_with_examples() -> None:
    m, out = monitor(plain(counter={"start_bit": 8, "length": 4}), BARE)
    for i, c in enumerate([14, 15, 0, 1, 3, 4, 4, 5, 9, 10]):
        m.on_frame(i * 0.01, counter_frame(c))
    counts = m.close_window(1.0)
    ev = next(r for r in out if r.name == "can.counter")
    assert (ev.data["repeats"], ev.data["jumps"], ev.data["lost"]) == (1, 2, 4)
    assert [(e["kind"], e["prev"], e["cur"]) for e in ev.data["examples"]] == [("jump", 1, 3), ("repeat", 4, 4),
                                                                              ("jump", 5, 9)]
    assert counts["counter_errors"] == 3
    out.clear()
    m.on_frame(0.2, counter_frame(11))
    m.close_window(1.0)
    assert [r.name for r in out] == ["can.sensor"]  # a clean window has no counter event


def test_counter_after_a_timeout_is_not_a_jump() -> None:
    m, out = monitor(plain(counter={"start_bit": 8, "length": 4}), BARE)
    m.on_frame(0.0, counter_frame(1))
    m.check_timeout(0.5)
    m.on_frame(0.6, counter_frame(9))
    m.on_frame(0.61, counter_frame(10))
    m.close_window(1.0)
    assert "can.counter" not in [r.name for r in out]


def test_crc_failures_with_examples_and_no_double_count() -> None:
    m, out = monitor(plain(e2e={"profile": "P01", "data_id": 0x0BEE}), BARE)
    frames = [protect(P01, bytes(8), c) for c in range(6)]
    bad = bytearray(frames[3])
    bad[5] ^= 0x40
    frames[3] = bytes(bad)
    for i, f in enumerate(frames):
        m.on_frame(i * 0.01, f)
    m.close_window(1.0)
    crc = next(r for r in out if r.name == "can.crc")
    assert crc.data["failures"] == 1 and crc.data["profile"] == "P01"
    assert crc.data["examples"][0]["data"] == bad.hex()
    assert "can.counter" not in [r.name for r in out]  # the corrupt frame resynchronises, no jump reported


def test_e2e_counter_drives_the_alive_check() -> None:
    m, out = monitor(plain(e2e={"profile": "P05", "data_id": 0x1234}), BARE)
    spec = E2ESpec("P05", 0x1234)
    for i, c in enumerate([250, 251, 253, 254, 255, 0]):
        m.on_frame(i * 0.01, protect(spec, bytes(8), c))
    m.close_window(1.0)
    ev = next(r for r in out if r.name == "can.counter")
    assert (ev.data["jumps"], ev.data["lost"]) == (1, 1)


def test_blockage_is_a_fault_episode_with_signal_value_and_vss() -> None:
    m, out = monitor(ford(status=[{"signal": "CAN_BLOCKAGE_MNR", "fault_when": "== 1", "vss": VSS_FRONT,
                                   "cause": "blockage"}]))
    seq = [0, 0, 1, 1, 1, 0, 0]
    for i, b in enumerate(seq):
        m.on_frame(i * 0.03, radar_frame(blocked=b))
    assert names(out) == [("begin", "sensor.fault"), ("end", "sensor.fault")]
    begin, end = out
    assert begin.data | {"id": None} == {"bus": "radar", "sensor": "mrr", "id": None, "signal": "CAN_BLOCKAGE_MNR",
                                         "value": 1, "label": "Radar Blockage", "condition": "== 1", "vss": VSS_FRONT,
                                         "cause": "blockage"}
    assert end.data["cause"] == "blockage"
    assert end.data["duration_s"] == pytest.approx(0.09) and end.data["value"] == 0


def test_debounce_needs_consecutive_frames() -> None:
    m, out = monitor(ford(status=[{"signal": "CAN_RADAR_NOT_OP", "debounce": 3}]))
    for i, v in enumerate([0, 1, 1, 0, 1, 1, 1, 1]):
        m.on_frame(i * 0.03, radar_frame(CAN_RADAR_NOT_OP=v))
    assert names(out) == [("begin", "sensor.fault")]
    assert out[0].data["signal"] == "CAN_RADAR_NOT_OP"


@pytest.mark.parametrize("payload", [b"", b"\x20", bytes(7), bytes(9)])
def test_wrong_length_is_counted_and_not_decoded(payload: bytes) -> None:
    m, out = monitor(ford(status=[{"signal": "CAN_BLOCKAGE_MNR", "fault_when": "== 1"}]))
    m.on_frame(0.0, payload.replace(b"\0", b"\xff"))
    m.on_fd_frame()
    counts = m.close_window(1.0)
    assert counts["bad_length"] == 1 and counts["fd_on_classic"] == 1
    assert [r.name for r in out] == ["can.sensor"]


def test_bcm_timeout_and_resume() -> None:
    m, out = monitor(ford(mode="bcm", status=[{"signal": "CAN_BLOCKAGE_MNR", "fault_when": "== 1"}]),
                     {"name": "radar", "interface": "socketcan", "dbc": FORD})
    assert m.deadline() is None  # the kernel times this one
    m.on_changed(0.0, radar_frame())
    m.on_kernel_timeout(1.3)  # RX_TIMEOUT fires 0.3 s after the last frame at 1.0
    m.on_kernel_timeout(1.4)  # a second notification does not open a second episode
    m.on_changed(2.0, radar_frame(blocked=1))
    assert names(out) == [("begin", "can.timeout"), ("end", "can.timeout"), ("begin", "sensor.fault")]
    assert out[1].data["duration_s"] == pytest.approx(1.0)
    m.close_window(2.0)
    assert out[-1].data["changes"] == 2 and "jitter_p50_ms" not in out[-1].data
    assert out[-1].data["frames"] is None and out[-1].data["frames_source"] == "unknown"  # no count read


def test_bcm_frames_are_the_kernels_count_not_the_notifications() -> None:
    """33 frames/s with an unchanged status give no RX_CHANGED at all: `frames` is the kernel's per-operation
    count (read once per window, cumulative), `changes` the notifications."""
    m, out = monitor(ford(mode="bcm"), {"name": "radar", "interface": "socketcan", "dbc": FORD})
    m.kernel_count_reset()
    m.on_changed(0.0, radar_frame())      # the first frame is announced, the next 329 are not
    m.on_kernel_count(330)                # read when the window closes
    m.close_window(10.0)
    m.on_kernel_count(660)
    m.close_window(10.0)
    m.on_kernel_count(None)               # /proc/net/can-bcm not readable
    m.close_window(10.0)
    m.on_kernel_count(990)                # the next readable count covers both windows
    m.close_window(10.0)
    m.kernel_count_reset()                # the bus reopened: a new operation counts from 0
    m.on_kernel_count(40)
    m.close_window(10.0)
    got = [(r.data["frames"], r.data["frames_source"], r.data["changes"]) for r in out if r.name == "can.sensor"]
    assert got == [(330, "kernel_bcm", 1), (330, "kernel_bcm", 0), (None, "unknown", 0), (330, "kernel_bcm", 0),
                   (40, "kernel_bcm", 0)]


def test_raw_frames_are_the_frames_read() -> None:
    m, out = monitor(plain())
    for i in range(5):
        m.on_frame(i * 0.01, bytes(8))
    m.close_window(1.0)
    assert (out[-1].data["frames"], out[-1].data["frames_source"]) == (5, "read")


@pytest.mark.parametrize(("text", "want"), [
    (">>> socket 0000000012345678 / sk 00000000abcdef00 / bo 00000000abcdef00 / dropped 0 / bound vcan0 <<<\n"
     "rx_op: 101 vcan0 [1]d timeo=600000 # recv 4 (198) => reduction: 98%\n"
     "rx_op: 80012345 vcan0 [1]  # recv 198 (198) => reduction: 0%\n\n", {0x101: 198, 0x80012345: 198}),
    ("rx_op: 7A0 can1  [1]d timeo=500000 thr=100000 # recv 10 (5000) => reduction: near 100%\n", {0x7A0: 5000}),
    ("tx_op: 101 vcan0 [1] t1=100000 # sent 5\n", {}),                      # transmit ops are not sensors
    (">>> socket 0 / sk 0 / bo 0 / dropped 0 / bound vcan0 <<<\n\n", {}),  # no frame yet: no rx_op line
    ("rx_op: zz vcan0 [1] # recv x (y)\ngarbage\n", {}),
])
def test_bcm_proc_parser(text: str, want: dict[int, int]) -> None:
    assert parse_bcm_proc(text) == want


def bus_monitor() -> tuple[BusMonitor, list[Record]]:
    out: list[Record] = []
    return BusMonitor("chassis", 500_000, RecordFactory(FakeClock()), out, now=0.0), out


def test_error_frames_drive_bus_off_and_error_passive_episodes() -> None:
    b, out = bus_monitor()
    b.on_error_frame(0.1, 0x20000004, bytes([0, 0x10]))  # controller: rx passive
    b.on_error_frame(0.2, 0x20000040, b"")  # bus-off
    b.on_error_frame(0.2, 0x20000080, b"")  # bus error, no state
    b.on_error_frame(1.2, 0x20000100, b"")  # restarted
    assert names(out) == [("begin", "can.error_passive"), ("end", "can.error_passive"), ("begin", "can.bus_off"),
                          ("end", "can.bus_off")]
    assert out[3].data["duration_s"] == pytest.approx(1.0)
    b.close_window(2.0, counted=True)
    ev = next(r for r in out if r.name == "can.error")
    assert ev.data["frames"] == 4 and ev.data["classes"] == {"crtl": 1, "busoff": 1, "buserror": 1, "restarted": 1}
    metric = next(r for r in out if r.kind is Kind.METRIC)
    assert metric.data["state"] == "active" and metric.data["err_frames"] == 4


def test_bus_traffic_from_interface_counters() -> None:
    b, out = bus_monitor()
    b.traffic(1_000, 8_000, 0.0)
    b.traffic(41_000, 328_000, 10.0)
    b.close_window(10.0, counted=False)
    assert out[0].data["frames_s"] == 4000.0 and out[0].data["load_pct"] == pytest.approx(88.8)
    b.traffic(5, 40, 20.0)  # interface recreated: counters restarted
    b.close_window(20.0, counted=False)
    assert out[1].data["frames_s"] == 0.0


def test_open_episodes_end_when_the_agent_stops() -> None:
    m, out = monitor(ford(status=[{"signal": "CAN_BLOCKAGE_MNR", "fault_when": "== 1"}]))
    m.on_frame(0.0, radar_frame(blocked=1))
    m.check_timeout(0.5)
    m.end_all(2.0)
    assert names(out) == [("begin", "sensor.fault"), ("begin", "can.timeout"), ("end", "can.timeout"),
                          ("end", "sensor.fault")]
    assert {r.data["ended_by"] for r in out if r.kind.label == "end"} == {"agent_stop"}
    assert out[2].data["duration_s"] == 2.0 and out[3].data["duration_s"] == 2.0
    b, bout = bus_monitor()
    b.on_error_frame(1.0, 0x20000040, b"")
    b.end_all(3.0)
    assert names(bout) == [("begin", "can.bus_off"), ("end", "can.bus_off")]
    assert bout[1].data["ended_by"] == "agent_stop"


def test_e2e_without_a_fixed_length_takes_short_frames() -> None:
    """No DBC and no `length`: a 4-byte P01 frame is checked, not crashed on by the 8-byte fast path."""
    m, out = monitor({"name": "s", "id": 0x120, "cycle_ms": 10, "e2e": {"profile": "P01", "data_id": 0x0BEE}}, BARE)
    m.on_frames([(0.0, protect(P01, bytes(4), 1)), (0.01, protect(P01, bytes(8), 2)), (0.02, b"\x07")])
    assert m.close_window(1.0)["crc_failures"] == 0
    assert out[0].data["bad_length"] == 1  # one byte cannot hold the P01 header: counted, not checked
