"""Pure rules from tables: counters, cycles, load, conditions, error frames, controller states, bit fields."""

from __future__ import annotations

import math

import cantools
import pytest
from canhelp import ESR, FORD
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.probes.can.bus_state import parse_ip_link
from agent.probes.can.fields import BitField, or_masks
from agent.probes.can.rules import (
    ConditionError,
    bus_load_pct,
    bus_state_changes,
    counter_verdict,
    decode_error_frame,
    jitter_ms,
    missed_cycles,
    parse_condition,
    percentile,
    state_from_counters,
)


@pytest.mark.parametrize(("prev", "cur", "modulo", "verdict", "lost"), [
    (0, 1, 16, "ok", 0), (15, 0, 16, "ok", 0), (14, 0, 15, "ok", 0), (3, 3, 16, "repeat", 0),
    (3, 5, 16, "jump", 1), (15, 2, 16, "jump", 2), (2, 1, 16, "jump", 14), (1, 3, 4, "jump", 1),
    (13, 15, 15, "jump", 0), (255, 0, 256, "ok", 0),
])
def test_counter_verdicts(prev: int, cur: int, modulo: int, verdict: str, lost: int) -> None:
    assert counter_verdict(prev, cur, modulo) == (verdict, lost)


@pytest.mark.parametrize(("gap", "cycle", "missed"), [
    (0.030, 0.030, 0), (0.044, 0.030, 0), (0.046, 0.030, 1), (0.060, 0.030, 1), (1.03, 0.030, 33),
    (0.5, 0.0, 0),
])
def test_missed_cycles(gap: float, cycle: float, missed: int) -> None:
    assert missed_cycles(gap, cycle) == missed


def test_percentiles_and_jitter() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2
    assert percentile([1, 2, 3, 4], 99) == 4
    assert math.isnan(percentile([], 50))
    j = jitter_ms([0.030] * 98 + [0.031, 0.040], 0.030)
    assert j == {"period_p50_ms": 30.0, "jitter_p50_ms": 0.0, "jitter_p99_ms": 1.0}
    assert jitter_ms([], 0.03) == {}


@pytest.mark.parametrize(("frames", "nbytes", "secs", "bitrate", "ext", "pct"), [
    (4000, 32000, 1.0, 500_000, 0, 88.8),  # 4000 frames of (47 + 64) bits
    (0, 0, 1.0, 500_000, 0, 0.0), (100, 800, 0.0, 500_000, 0, 0.0), (1000, 8000, 1.0, 500_000, 1000, 26.2),
])
def test_bus_load(frames: int, nbytes: int, secs: float, bitrate: int, ext: int, pct: float) -> None:
    assert bus_load_pct(frames, nbytes, secs, bitrate, ext) == pct


NAMES = {"PMM_RADAR_NO_FAULT": 0.0, "PMM_RADAR_BLOCKED_FRONT": 1.0, "PMM_RADAR_INVALID_MIA": 2.0}


@pytest.mark.parametrize(("text", "value", "holds"), [
    ("== 1", 1, True), ("== 1", 0, False), ("!= 0", 3, True), ("!= 0", 0, False), (">= 3", 3, True),
    ("> 3", 3, False), ("< 0.5", 0.25, True), ("<= -1", -1, True), ("in 1, 2", 2, True), ("in 1,2", 0, False),
    ("not in 0, 3", 3, False), ("not   in 0", 1, True), ("== 0x10", 16, True),
    ("== 'PMM_RADAR_BLOCKED_FRONT'", 1, True), ("in 'PMM_RADAR_BLOCKED_FRONT', 'PMM_RADAR_INVALID_MIA'", 2, True),
    ("!= \"PMM_RADAR_NO_FAULT\"", 0, False),
])
def test_conditions(text: str, value: float, holds: bool) -> None:
    assert parse_condition(text, NAMES).holds(value) is holds


@pytest.mark.parametrize(("text", "msg"), [
    ("1", "cannot parse"), ("=~ 1", "cannot parse"), ("== x", "not a number"), ("== 'NOPE'", "unknown value name"),
    ("in ,", "no value"),
])
def test_bad_conditions(text: str, msg: str) -> None:
    with pytest.raises(ConditionError, match=msg):
        parse_condition(text, NAMES)


@pytest.mark.parametrize(("can_id", "data", "classes", "state", "tec", "rec"), [
    (0x20000040, "", ("busoff",), "bus_off", None, None),
    (0x20000100, "", ("restarted",), "active", None, None),
    (0x20000004, "0010", ("crtl",), "passive", None, None),
    (0x20000004, "0020", ("crtl",), "passive", None, None),
    (0x20000004, "0004", ("crtl",), "warning", None, None),
    (0x20000004, "0040", ("crtl",), "active", None, None),
    (0x20000004, "0001", ("crtl",), None, None, None),  # rx overflow: no state change
    (0x20000204, "001000000000a08a", ("crtl", "cnt"), "passive", 0xA0, 0x8A),
    (0x20000088, "", ("prot", "buserror"), None, None, None),
    (0x20000000, "", ("unspecified",), None, None, None),
    (0x20000020, "ffff", ("ack",), None, None, None),  # short or odd payloads never raise
])
def test_error_frames(can_id: int, data: str, classes: tuple[str, ...], state: str | None,
                      tec: int | None, rec: int | None) -> None:
    ef = decode_error_frame(can_id, bytes.fromhex(data))
    assert (ef.classes, ef.state, ef.tec, ef.rec) == (classes, state, tec, rec)


@pytest.mark.parametrize(("tec", "rec", "state"), [
    (0, 0, "active"), (95, 0, "active"), (96, 0, "warning"), (0, 127, "warning"), (128, 0, "passive"),
    (5, 200, "passive"), (255, 0, "passive"), (256, 0, "bus_off"),
])
def test_state_from_counters(tec: int, rec: int, state: str) -> None:
    assert state_from_counters(tec, rec) == state


@pytest.mark.parametrize(("prev", "new", "edges"), [
    ("unknown", "active", []), ("active", "warning", []), ("active", "passive", [("begin", "can.error_passive")]),
    ("passive", "active", [("end", "can.error_passive")]),
    ("passive", "bus_off", [("end", "can.error_passive"), ("begin", "can.bus_off")]),
    ("bus_off", "active", [("end", "can.bus_off")]), ("unknown", "bus_off", [("begin", "can.bus_off")]),
    ("bus_off", "bus_off", []), ("warning", "stopped", []),
])
def test_bus_state_edges(prev: str, new: str, edges: list[tuple[str, str]]) -> None:
    assert bus_state_changes(prev, new) == edges


# `ip -j -d -s link show` output as iproute2 prints it for an mcp251x controller and for vcan.
IP_CAN = """[{"ifindex":4,"ifname":"can0","flags":["NOARP","UP","LOWER_UP","ECHO"],"mtu":16,"qdisc":"pfifo_fast",
"operstate":"UP","linkmode":"DEFAULT","group":"default","txqlen":10,"link_type":"can","promiscuity":0,
"linkinfo":{"info_kind":"can","info_data":{"ctrlmode":["LISTEN-ONLY"],"state":"ERROR-PASSIVE",
"berr_counter":{"tx":0,"rx":135},"restart_ms":100,"bittiming":{"bitrate":500000,"sample_point":"0.875",
"tq":125,"prop_seg":6,"phase_seg1":7,"phase_seg2":2,"sjw":1},"clock":8000000},
"info_xstats":{"restarts":2,"bus_error":17,"arbitration_lost":0,"error_warning":3,"error_passive":1,"bus_off":2}},
"stats64":{"rx":{"bytes":8000,"packets":1000,"errors":0,"dropped":0,"over_errors":0,"multicast":0},
"tx":{"bytes":0,"packets":0,"errors":0,"dropped":0,"carrier_errors":0,"collisions":0}}}]"""
IP_VCAN = """[{"ifindex":2,"ifname":"vcan0","flags":["NOARP","UP","LOWER_UP"],"mtu":72,"operstate":"UNKNOWN",
"link_type":"can","linkinfo":{"info_kind":"vcan"},"stats64":{"rx":{"bytes":0,"packets":0}}}]"""


def test_ip_link_parsing() -> None:
    info = parse_ip_link(IP_CAN)
    assert (info.kind, info.state, info.tec, info.rec, info.bitrate) == ("can", "passive", 0, 135, 500000)
    assert info.xstats["bus_off"] == 2
    v = parse_ip_link(IP_VCAN)
    assert (v.kind, v.state, v.tec) == ("vcan", None, None)
    for junk in ("", "{}", "[]", "[1]", "not json", '[{"linkinfo": 5}]', '[{"linkinfo": {"info_data": {"state": 7}}}]'):
        assert parse_ip_link(junk).state is None


def _signals() -> list[cantools.database.can.Signal]:
    out = []
    for path, name in ((FORD, "MRR_Status_Radar"), (ESR, "ESR_Status2"), (ESR, "ESR_Status")):
        out += cantools.database.load_file(path, strict=False).get_message_by_name(name).signals
    return out


SIGNALS = _signals()


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(min_size=8, max_size=8))
def test_bit_fields_decode_like_cantools(payload: bytes) -> None:
    """Intel and Motorola, signed and scaled signals of real DBCs: the hot-path extractor agrees with
    cantools on any payload."""
    for sig in SIGNALS:
        f = BitField(sig.start, sig.length, sig.byte_order == "little_endian", sig.is_signed, sig.scale, sig.offset)
        decoded = cantools.database.can.Message(0x1, "m", 8, [sig], strict=False).decode(
            payload, decode_choices=False, scaling=True)[sig.name]
        assert f.value(payload) == pytest.approx(decoded), sig.name


def test_masks_cover_exactly_the_field() -> None:
    blk = BitField(5, 1, little_endian=False)  # FORD CAN_BLOCKAGE_MNR 5|1@0+
    assert blk.mask(8) == bytes([0x20]) + bytes(7)
    filt = BitField(15, 4, little_endian=False)  # CAN_BLOCKAGE_SIDELOBE_FILTER_VAL 15|4@0+: bits 15..12
    assert filt.mask(8) == bytes([0, 0xF0]) + bytes(6)
    motorola_across = BitField(10, 11, little_endian=False)  # ESR CAN_TX_STEERING_ANGLE_ACK 10|11@0+
    assert motorola_across.mask(8) == bytes([0, 0x07, 0xFF]) + bytes(5)
    intel = BitField(52, 4)  # tesla DAS_status2Counter 52|4@1+
    assert intel.mask(8) == bytes(6) + bytes([0xF0, 0])
    assert or_masks([blk.mask(8), intel.mask(8)], 8) == bytes([0x20, 0, 0, 0, 0, 0, 0xF0, 0])
    assert (blk.min_bytes, intel.min_bytes, motorola_across.min_bytes) == (1, 7, 3)


def test_bit_field_rejects_impossible_layouts() -> None:
    with pytest.raises(ValueError):
        BitField(0, 0)
    with pytest.raises(ValueError):
        BitField(510, 8)
