""""The way to the broker may be back": what cuts the uplink's reconnect wait short (issue 13).

While the uplink is disconnected its thread sleeps here between attempts. It wakes early when
- another part of the agent says so (`nudge`): the link probe saw the modem register/attach or its TCP target
  answer again;
- the kernel says a network interface came up or got an address (rtnetlink multicast groups RTMGRP_LINK and
  RTMGRP_IPV4/IPV6_IFADDR, read on the same wait: no thread, no polling).
Waking is a poll() on a socketpair and the netlink socket, so an idle disconnected agent costs no CPU.

The uplink also waits here while connected (until `wake` says the connection died), because news that the
way is back can come under a connection that never noticed the loss: a tunnel shorter than MQTT keep-alive
(60 s: paho gives up after 1-2 keep-alive periods). What was written meanwhile sits behind TCP's retransmission
timer, which doubled through the outage (3-20 s outages: link up → PUBACK p95 12.3 s without this,
tools/bench/linkback.py), and after a new address the connection is dead until keep-alive says so.
`connection_stalled` tells those apart from a healthy connection (TCP_INFO's backoff; is the source address
still ours), and the uplink then reconnects at once instead of waiting for either.
Hand-written because nothing in the standard library or our dependencies listens to rtnetlink; the parsing is
the 16-byte nlmsghdr and the 16-byte ifinfomsg, nothing else.
"""

from __future__ import annotations

import errno
import logging
import select
import socket
import struct
import time
from collections.abc import Callable

log = logging.getLogger("icvq.uplink")

_NLMSG_HDR = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
RTM_NEWLINK, RTM_NEWADDR = 16, 20
IFF_RUNNING = 0x40
RTMGRP_LINK, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x1, 0x10, 0x100


def interface_came_up(data: bytes) -> str | None:
    """The first "up" news in one rtnetlink datagram: an interface RUNNING (carrier) or a new address."""
    off = 0
    while off + _NLMSG_HDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG_HDR.unpack_from(data, off)
        if length < _NLMSG_HDR.size:
            return None
        body = off + _NLMSG_HDR.size
        if kind == RTM_NEWADDR:
            return "an interface got an address"
        if kind == RTM_NEWLINK and body + _IFINFO.size <= len(data):
            _family, _type, index, flags, _change = _IFINFO.unpack_from(data, body)
            if flags & IFF_RUNNING:
                return f"interface #{index} is up"
        off += (length + 3) & ~3
    return None


_TCP_INFO_HEAD = struct.Struct("=BBBBB")  # tcpi_state, ca_state, retransmits, probes, backoff


def tcp_backing_off(info: bytes) -> bool:
    """From the head of struct tcp_info: has a retransmission or zero-window-probe timer of this connection
    expired and doubled (data written is waiting out a backed-off timer)?"""
    if len(info) < _TCP_INFO_HEAD.size:
        return False
    return _TCP_INFO_HEAD.unpack_from(info)[4] > 0


def _address_gone(family: int, local: tuple[object, ...]) -> bool:
    """The connection's source address is no longer on this host (the link came back with a new one)."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((local[0], 0, *local[2:]))
    except OSError as e:
        return e.errno == errno.EADDRNOTAVAIL
    return False


def connection_stalled(sock: socket.socket | None) -> bool:
    """After news that the way is back: would this connection wait out a timer (or keep-alive) instead of
    carrying data now? False for anything not a TCP socket of ours."""
    if sock is None:
        return False
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_HEAD.size)
        local = sock.getsockname()
    except (OSError, AttributeError):
        return False
    return tcp_backing_off(info) or (isinstance(local, tuple) and _address_gone(sock.family, local))


def _netlink() -> socket.socket | None:
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        s.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        s.setblocking(False)
        return s
    except (OSError, AttributeError) as e:  # not Linux, or a sandbox without netlink: nudges still work
        log.debug("no rtnetlink (%s): interface changes will not cut the reconnect wait short", e)
        return None


class WayBack:
    """One per uplink; `wait` runs on the uplink thread, `nudge` from any thread."""

    def __init__(self, netlink: bool = True, now: Callable[[], float] = time.monotonic) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        self._nl = _netlink() if netlink else None
        self._now = now
        self._reason = ""

    def nudge(self, reason: str) -> None:
        self._reason = reason
        self._poke(b"!")

    def _poke(self, byte: bytes) -> None:
        try:
            self._w.send(byte)
        except OSError:  # buffer full: a wake-up is pending anyway
            pass

    def drain(self) -> None:
        """Forget news from while connected: only what happens during a wait counts."""
        for s in (self._r, self._nl):
            if s is None:
                continue
            try:
                while s.recv(65536):
                    pass
            except OSError:
                pass
        self._reason = ""

    def wake(self) -> None:
        """Make a waiter look at its `done` condition (the connection died): no news of the way, and a wait
        without `done` (the reconnect wait) ignores it."""
        self._poke(b"w")

    def wait(self, timeout_s: float, done: Callable[[], bool] | None = None) -> str | None:
        """Sleep up to timeout_s; returns why the way may be back, or None when the time ran out or `done()`
        became true (checked after each wake-up)."""
        deadline = self._now() + timeout_s
        socks = {s.fileno(): s for s in (self._r, self._nl) if s is not None}
        # poll(), not select(): a process holding many sockets (the fleet simulator runs hundreds of agents
        # in one process) has descriptors above FD_SETSIZE (1024), which select() refuses.
        poller = select.poll()
        for fd in socks:
            poller.register(fd, select.POLLIN)
        while True:
            if done is not None and done():
                return None
            left = deadline - self._now()
            if left <= 0:
                return None
            try:
                events = poller.poll(max(1, int(left * 1000 + 0.999)))
            except InterruptedError:
                continue
            for fd, _ in events:
                s = socks[fd]
                try:
                    data = s.recv(65536)
                except OSError:
                    continue
                if s is self._r:
                    if b"!" not in data:
                        continue  # only wake(): see `done`
                    reason = self._reason or "nudged"
                    self.drain()
                    return reason
                up = interface_came_up(data)
                if up:
                    return up

    def close(self) -> None:
        for s in (self._r, self._w, self._nl):
            if s is not None:
                s.close()
