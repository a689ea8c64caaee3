"""Reconnect policy (issue 13): which wait follows which failure, what cuts a wait short; the topic alias."""

from __future__ import annotations

import os
import queue
import shutil
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from broker import Mosquitto
from recorder import Recorder

from agent import wayback
from agent.config import UplinkConfig, VehicleConfig
from agent.uplink import LOST, REFUSED, UNREACHABLE, Acked, Up, Uplink, retry_delay_s
from tools.bench.linkback import Car

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


def _tcp_info(backoff: int) -> bytes:
    return struct.pack("=BBBBB", 1, 0, 0, 0, backoff) + b"\0" * 99


TCP_INFO = [
    (_tcp_info(0), False),   # healthy, or the link came back before any timer expired
    (_tcp_info(1), True),    # a retransmission / zero-window-probe timer expired and doubled
    (_tcp_info(6), True),
    (b"\x01\x00", False),    # truncated: not ours to judge
]


@pytest.mark.parametrize(("info", "expected"), TCP_INFO)
def test_a_connection_backing_off_its_timer_is_stalled(info: bytes, expected: bool) -> None:
    assert wayback.tcp_backing_off(info) is expected


def test_a_healthy_connection_is_not_stalled() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv, socket.create_connection(srv.getsockname()) as a:
        b, _ = srv.accept()
        with b:
            a.sendall(b"x")
            assert b.recv(1) == b"x"
            assert not wayback.connection_stalled(a)
            assert not wayback.connection_stalled(None)


def test_wake_ends_only_a_wait_that_is_done() -> None:
    """wake() (the connection died) must not cut a reconnect wait short, only the connected wait it is meant for."""
    w = wayback.WayBack(netlink=False)
    try:
        w.wake()
        assert w.wait(0.05) is None  # ran out: the wake-up was not news of the way
        dead = threading.Event()
        threading.Timer(0.1, lambda: (dead.set(), w.wake())).start()
        assert w.wait(3600.0, done=dead.is_set) is None
        assert dead.is_set()
    finally:
        w.close()


def _next_up(up: Uplink, timeout_s: float) -> Up:
    deadline = time.monotonic() + timeout_s
    while True:
        ev = up.events.get(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(ev, Up):
            return ev


def test_link_back_under_a_stalled_connection_reconnects_at_once(tmp_path: Path) -> None:
    """An outage shorter than keep-alive (60 s): the uplink, in a network namespace whose only way out is one
    veth, never saw the loss, and what it published meanwhile waits behind TCP's backed-off retransmission timer.
    The kernel's news that the link is up ends that connection and a new one follows at once (before the fix
    the old one went on, after its timer, and no new connection came)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.fail("needs root and iproute2 (ip netns): `make deps` installs iproute2")
    car = Car(ns=f"icvq-t{os.getpid()}", car_if=f"ltc{os.getpid()}", host_if=f"lth{os.getpid()}")
    broker = up = None
    try:
        car.create()
        broker = car.broker(tmp_path / "b")
        with car.inside():
            up = Uplink(UplinkConfig(host=car.host_addr, port=broker.port, allow_plaintext=True),
                        VehicleConfig("VIN7", "hu", "f"), boot_id="ab" * 16, birth_fields=dict,
                        wall_ms=lambda: 1_767_225_600_000)
            up.start()
        first = _next_up(up, 20)
        car.link(up=False)
        assert up.publish(b"written during the outage") is not None
        sock = up._client.socket() if up._client else None
        assert isinstance(sock, socket.socket)
        deadline = time.monotonic() + 20
        # TCP_INFO directly: this thread is not in the car's namespace, where the address check belongs.
        while not wayback.tcp_backing_off(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)):
            assert time.monotonic() < deadline, "TCP never backed off"
            time.sleep(0.05)
        car.link(up=True)
        try:
            second = _next_up(up, 20)
        except queue.Empty:
            pytest.fail("no new connection after the link came back under a stalled one")
        assert second.gen > first.gen
        assert up.last_way_back  # the kernel's news, not a timer
    finally:
        if up is not None:
            up.stop()
        if broker is not None:
            broker.stop()
        car.destroy()


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
