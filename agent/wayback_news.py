"""Reading the news that the way to the broker may be back (agent/wayback.py): the kernel's rtnetlink datagrams,
and whether a connection that never noticed an outage now waits out a timer (`connection_stalled`).

No threads of its own: both run on the uplink thread. Split from wayback.py because they run only when news
arrives (an interface up, a new address, a nudge while connected), which an idle car on a steady link never
sees (issue 13: idle RSS, ~8 KiB of code objects; tracemalloc). wayback.py still names them (agent/lazy.py).
"""

from __future__ import annotations

import errno
import socket
import struct

_NLMSG_HDR = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
RTM_NEWLINK, RTM_NEWADDR = 16, 20
IFF_RUNNING = 0x40


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
