"""Reconnect policy (issue 13): which wait follows which failure, what cuts a wait short; the topic alias."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from broker import Mosquitto
from recorder import Recorder

from agent import wayback
from agent.config import UplinkConfig, VehicleConfig
from agent.uplink import LOST, REFUSED, UNREACHABLE, Acked, Up, Uplink, retry_delay_s

CFG = UplinkConfig(backoff_min_s=1.0, backoff_max_s=120.0, reconnect_probe_s=2.5)

DELAYS = [
    # outcome, failures so far, random draw → seconds
    (LOST, 0, 0.0, 0.0),              # a long session ended: spread the fleet over [0, probe]
    (LOST, 0, 1.0, 2.5),
    (UNREACHABLE, 7, 0.0, 1.25),      # TCP refused/unreachable: probe again soon, whatever came before
    (UNREACHABLE, 7, 1.0, 3.75),
    (REFUSED, 0, 1.0, 1.0),           # the broker said no: exponential with full jitter
    (REFUSED, 3, 1.0, 8.0),
    (REFUSED, 3, 0.0, 1.0),
    (REFUSED, 30, 1.0, 120.0),
]


@pytest.mark.parametrize(("outcome", "failures", "draw", "expected"), DELAYS)
def test_retry_delay_table(outcome: str, failures: int, draw: float, expected: float) -> None:
    assert retry_delay_s(outcome, failures, CFG, rnd=lambda: draw) == pytest.approx(expected)


def _nlmsg(kind: int, body: bytes) -> bytes:
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


def _ifinfo(index: int, flags: int) -> bytes:
    return struct.pack("=BxHiII", 0, 1, index, flags, 0xFFFFFFFF)


NETLINK = [
    (_nlmsg(wayback.RTM_NEWLINK, _ifinfo(3, 0x1 | 0x40)), "interface #3 is up"),
    (_nlmsg(wayback.RTM_NEWLINK, _ifinfo(3, 0x1)), None),           # admin up, no carrier yet
    (_nlmsg(17, _ifinfo(3, 0x41)), None),                           # RTM_DELLINK
    (_nlmsg(wayback.RTM_NEWADDR, b"\0" * 8), "an interface got an address"),
    (_nlmsg(17, _ifinfo(2, 0)) + _nlmsg(wayback.RTM_NEWLINK, _ifinfo(4, 0x40)), "interface #4 is up"),
    (b"\x03\x00", None),                                            # truncated
    (struct.pack("=IHHII", 4, 16, 0, 0, 0), None),                  # length below the header
]


@pytest.mark.parametrize(("data", "expected"), NETLINK)
def test_interface_news_from_rtnetlink(data: bytes, expected: str | None) -> None:
    assert wayback.interface_came_up(data) == expected


def test_a_nudge_ends_the_wait_and_news_from_before_is_forgotten() -> None:
    w = wayback.WayBack(netlink=False)
    try:
        w.nudge("link probe: registered")
        assert w.wait(60.0) == "link probe: registered"
        w.nudge("stale, from while connected")
        w.drain()
        assert w.wait(0.01) is None
    finally:
        w.close()


def test_batches_use_a_topic_alias_and_arrive_on_the_full_topic(tmp_path: Path, broker: Mosquitto) -> None:
    """Against a real mosquitto (which allows 10 aliases): the first batch names the topic, the rest send
    only alias 1; subscribers still see every batch on the vehicle's batch topic."""
    rec = Recorder(broker.port).start()
    up = Uplink(UplinkConfig(host="127.0.0.1", port=broker.port), VehicleConfig("VIN7", "hu", "f"),
                boot_id="ab" * 16, birth_fields=dict, wall_ms=lambda: 1_767_225_600_000)
    up.start()
    try:
        got: list[Any] = []
        while not any(isinstance(e, Up) for e in got):
            got.append(up.events.get(timeout=20))
        sent = [up.publish(f"payload {i}".encode()) for i in range(3)]
        assert all(s is not None for s in sent)
        acks = 0
        while acks < 3:
            if isinstance(up.events.get(timeout=20), Acked):
                acks += 1
        assert up._alias_ok and up._alias_sent
        rec.wait(lambda r: len([t for t, _ in r.messages if t.endswith("/batch")]) >= 3)
    finally:
        up.stop()
        rec.stop()
    with rec.lock:
        topics = [t for t, _ in rec.messages if t.endswith("/batch")]
    assert topics == ["icvq/v1/f/VIN7/hu/batch"] * 3
