"""Who is on the other end of a Unix socket: SO_PEERCRED for uid/gid, SO_PEERGROUPS for the supplementary
groups (as the kernel saw them at connect(), so a later group change or a forged claim does not matter)."""

from __future__ import annotations

import grp
import pwd
import socket
import struct
from pathlib import Path

from .dataclass_shared import dataclass

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; Python has no constant for it
PEER_GROUPS_BUF = 1024  # CPython's getsockopt() limit: 256 groups; more (ERANGE) takes the fallbacks


@dataclass(frozen=True)
class Peer:
    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...]

    def __str__(self) -> str:
        return f"pid {self.pid} uid {self.uid} gid {self.gid}"


def peer_of(sock: socket.socket) -> Peer:
    pid, uid, gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return Peer(pid, uid, gid, _peer_groups(sock, pid, uid))


def _peer_groups(sock: socket.socket, pid: int, uid: int) -> tuple[int, ...]:
    """The peer's supplementary groups as the kernel saw them at connect(); fallbacks for old kernels."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, PEER_GROUPS_BUF)
        return struct.unpack(f"{len(raw) // 4}I", raw)
    except OSError:
        pass
    try:
        # Racy (pid reuse) and hidden under ProtectProc=invisible, hence only second choice.
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Groups:"):
                return tuple(int(g) for g in line.split()[1:])
    except (OSError, ValueError):
        pass
    try:
        # Last resort: membership as configured in the group database, not as the peer holds it.
        name = pwd.getpwuid(uid).pw_name
        return tuple(g.gr_gid for g in grp.getgrall() if name in g.gr_mem)
    except KeyError:
        return ()


def allowed(peer: Peer, own_uid: int, group_gid: int | None) -> bool:
    if peer.uid in (0, own_uid):
        return True
    return group_gid is not None and (peer.gid == group_gid or group_gid in peer.groups)
