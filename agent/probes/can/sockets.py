"""Kernel CAN sockets, listen-only: a raw socket filtered to the monitored ids, and a BCM socket.

Why raw sockets and not python-can on socketcan: python-can's Bus.recv builds a Message object per frame
(~100 µs of CPU per frame measured in the test guest), where a kernel-filtered raw socket read in batches
with recvmmsg costs a few µs per *monitored* frame and nothing for the rest of the bus.

Listen-only: nothing here can put a frame on a bus. The raw socket object is private to RawReader, which has
no send path. The BCM socket is written to, but only with RX_SETUP/RX_DELETE: those are requests to the local
kernel to install a receive filter and timer, they never reach the wire. BCM's TX_* opcodes (which do
transmit) are refused unless `allow_transmit` is set, and nothing in the agent uses them today.
(A CAN controller still ACKs frames on the wire unless the interface is in listen-only mode,
`ip link set can0 type can listen-only on`; that is the integrator's choice, not the agent's.)

Socket option numbers are the asm-generic ones (x86, ARM, AArch64, RISC-V); Python's socket module lacks
several of them (CAN_RAW_ERR_FILTER, SO_TIMESTAMPNS, SO_RXQ_OVFL).
"""

from __future__ import annotations

import ctypes
import errno
import socket
import struct
import sys
from collections.abc import Iterable, Iterator
from typing import Any

SOL_CAN_RAW = 101
CAN_RAW_FILTER = 1
CAN_RAW_ERR_FILTER = 2
CAN_RAW_FD_FRAMES = 5
CAN_RAW_FILTER_MAX = 512
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS_OLD = 35
SO_RXQ_OVFL = 40
SO_TIMESTAMPNS_NEW = 64

CAN_EFF_FLAG = 0x80000000
CAN_RTR_FLAG = 0x40000000
CAN_ERR_FLAG = 0x20000000
CAN_SFF_MASK = 0x7FF
CAN_EFF_MASK = 0x1FFFFFFF
CAN_ERR_MASK = 0x1FFFFFFF
CAN_MTU = 16
CANFD_MTU = 72

# BCM opcodes and flags (linux/can/bcm.h)
TX_SETUP, TX_DELETE, TX_READ, TX_SEND = 1, 2, 3, 4
RX_SETUP, RX_DELETE, RX_READ = 5, 6, 7
TX_STATUS, TX_EXPIRED, RX_STATUS, RX_TIMEOUT, RX_CHANGED = 8, 9, 10, 11, 12
SETTIMER, STARTTIMER = 0x0001, 0x0002
RX_CHECK_DLC, RX_ANNOUNCE_RESUME = 0x0040, 0x0100
RECEIVE_OPS = frozenset({RX_SETUP, RX_DELETE, RX_READ})

_FRAME = struct.Struct("=IB3x8s")  # struct can_frame: can_id, len, pad/res/len8_dlc, data[8]


class TransmitRefused(PermissionError):
    """Something asked to transmit on a vehicle bus while `allow_transmit` is off."""


def filter_for(can_id: int, extended: bool) -> tuple[int, int]:
    """CAN_RAW_FILTER entry matching exactly one id; data frames only (RTR requests are not sensor data)."""
    if extended:
        return can_id | CAN_EFF_FLAG, CAN_EFF_MASK | CAN_EFF_FLAG | CAN_RTR_FLAG
    return can_id, CAN_SFF_MASK | CAN_EFF_FLAG | CAN_RTR_FLAG


def _enable_timestamps(sock: socket.socket) -> str:
    """Kernel receive timestamps (CLOCK_REALTIME, taken when the frame arrived, not when we read it) let the
    agent read in batches without distorting cycle jitter. Returns the struct format of the timespec."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS_NEW, 1)  # 64-bit timespec on every ABI (5.1+)
        return "qq"
    except OSError:
        pass
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS_OLD, 1)
        return "qq" if struct.calcsize("l") == 8 else "ii"
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------ recvmmsg
class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.c_void_p),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


_MSG_DONTWAIT = 0x40


def _libc_recvmmsg() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).recvmmsg
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


class _BatchReader:
    """recvmmsg(2) through ctypes: one system call and one struct.iter_unpack per batch of up to `vlen`
    frames, each with its timestamp and the socket's drop counter, instead of a recvmsg and an ancillary
    data list per frame (3x cheaper per frame in the test guest)."""

    def __init__(self, fd: int, ts_fmt: str, vlen: int = 64) -> None:
        fn = _libc_recvmmsg()
        if fn is None:
            raise OSError(errno.ENOSYS, "recvmmsg not available")
        self._fn = fn
        self.fd = fd
        self.vlen = vlen
        hl = socket.CMSG_LEN(0)
        ts_len = struct.calcsize("=" + ts_fmt) if ts_fmt else 16
        ts_space, drop_space = socket.CMSG_SPACE(ts_len), socket.CMSG_SPACE(4)
        ctrl = ts_space + drop_space
        self.stride = stride = (CANFD_MTU + ctrl + 7) // 8 * 8
        pad_end = stride - CANFD_MTU - ctrl
        # One slot = frame (canfd_frame size) + control messages in the kernel's order: timestamp, drops.
        tsf = ts_fmt or "qq"
        self.fmt = struct.Struct(f"=IB3x8s56x{hl}x{tsf}{ts_space - hl - ts_len}x{hl}xI{drop_space - hl - 4}x"
                                 f"{pad_end}x")
        assert self.fmt.size == stride
        self.buf = (ctypes.c_char * (stride * vlen))()
        self.iov = (_IoVec * vlen)()
        self.hdrs = (_MMsgHdr * vlen)()
        base = ctypes.addressof(self.buf)
        for i in range(vlen):
            self.iov[i].base, self.iov[i].len = base + i * stride, CANFD_MTU
            h = self.hdrs[i].hdr
            h.iov, h.iovlen = ctypes.addressof(self.iov[i]), 1
            h.control, h.controllen = base + i * stride + CANFD_MTU, ctrl
        self._hp = ctypes.addressof(self.hdrs)
        self._tmpl = bytes(self.hdrs)  # the kernel rewrites controllen and len: restore before each call
        self._hsize = ctypes.sizeof(_MMsgHdr)
        off = _MMsgHdr.len.offset
        self._len_off = off if sys.byteorder == "little" else off + 3  # low byte of msg_len

    def read(self) -> tuple[int, bytes, bytes]:
        """(count, slots, lengths): raw slots and the low byte of each message length (16 or 72)."""
        ctypes.memmove(self._hp, self._tmpl, len(self._tmpl))
        n = self._fn(self.fd, self._hp, self.vlen, _MSG_DONTWAIT, None)
        if n < 0:
            e = ctypes.get_errno()
            if e in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR):
                return 0, b"", b""
            raise OSError(e, errno.errorcode.get(e, "recvmmsg failed"))
        hb = ctypes.string_at(self._hp, n * self._hsize)
        return n, ctypes.string_at(self.buf, n * self.stride), hb[self._len_off::self._hsize]


# Frame tuple the readers yield: (can_id with flags, payload length, payload, ts seconds, ts ns, drops).
Frame = tuple[int, int, bytes, int, int, int]


class RawReader:
    """One raw socket per bus: kernel-filtered to the monitored ids, error frames on request."""

    def __init__(self, ifname: str, filters: Iterable[tuple[int, int]], *, error_frames: bool = True,
                 rcvbuf: int = 1 << 20, batch: bool = True) -> None:
        flt = list(filters)
        if len(flt) > CAN_RAW_FILTER_MAX:
            raise ValueError(f"{len(flt)} ids on one bus; the kernel takes at most {CAN_RAW_FILTER_MAX}")
        s = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
        try:
            # An empty filter list means "no data frames": a bus watched only for errors reads nothing else.
            s.setsockopt(SOL_CAN_RAW, CAN_RAW_FILTER, b"".join(struct.pack("=II", i, m) for i, m in flt))
            s.setsockopt(SOL_CAN_RAW, CAN_RAW_ERR_FILTER, struct.pack("=I", CAN_ERR_MASK if error_frames else 0))
            try:
                # FD frames reach us so that an FD frame on a classic bus is counted, not silently dropped.
                s.setsockopt(SOL_CAN_RAW, CAN_RAW_FD_FRAMES, 1)
            except OSError:
                pass
            for opt in (SO_RCVBUFFORCE, socket.SO_RCVBUF):  # FORCE needs CAP_NET_ADMIN; else rmem_max caps
                try:
                    s.setsockopt(socket.SOL_SOCKET, opt, rcvbuf)
                    break
                except OSError:
                    continue
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
            except OSError:
                pass
            self.ts_fmt = _enable_timestamps(s)
            s.bind((ifname,))
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        self._sock = s
        self._batch: _BatchReader | None = None
        if batch:
            try:
                self._batch = _BatchReader(s.fileno(), self.ts_fmt)
            except OSError:
                self._batch = None
        self._buf = bytearray(CANFD_MTU)
        self._ts = struct.Struct("=" + (self.ts_fmt or "qq"))
        self.more = False  # the last read filled a whole batch: more may be queued
        self._drops = 0  # last SO_RXQ_OVFL value seen by the fallback reader

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    @property
    def batched(self) -> bool:
        return self._batch is not None

    def read(self) -> tuple[Iterator[Frame], list[Frame]]:
        """Everything queued now: (classic frames as one iterator, FD frames as a list). May return a
        partial batch; call again while `more` is True."""
        b = self._batch
        if b is None:
            return self._read_slow()
        n, slots, lens = b.read()
        self.more = n == b.vlen
        if n == 0:
            return iter(()), []
        if lens.count(CAN_MTU) == n:
            return b.fmt.iter_unpack(slots), []
        classic: list[Frame] = []
        fd: list[Frame] = []
        for i, f in enumerate(b.fmt.iter_unpack(slots)):
            if lens[i] == CAN_MTU:
                classic.append(f)
            else:
                ln = min(f[1], 64)
                data = slots[i * b.stride + 8:i * b.stride + 8 + ln]
                fd.append((f[0], ln, data, f[3], f[4], f[5]))
        return iter(classic), fd

    def _read_slow(self) -> tuple[Iterator[Frame], list[Frame]]:
        """Fallback without recvmmsg: one recvmsg per frame."""
        classic: list[Frame] = []
        fd: list[Frame] = []
        anc = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(4)
        self.more = False
        for _ in range(256):
            try:
                nbytes, ancdata, _flags, _addr = self._sock.recvmsg_into([self._buf], anc)
            except (BlockingIOError, InterruptedError):
                break
            sec = ns = 0
            drops = self._drops
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind in (SO_TIMESTAMPNS_NEW, SO_TIMESTAMPNS_OLD):
                    sec, ns = self._ts.unpack_from(payload)
                elif level == socket.SOL_SOCKET and kind == SO_RXQ_OVFL:
                    drops = self._drops = struct.unpack_from("=I", payload)[0]
            can_id, ln = struct.unpack_from("=IB", self._buf)
            if nbytes == CAN_MTU:
                classic.append((can_id, ln, bytes(self._buf[8:16]), sec, ns, drops))
            else:
                ln = min(ln, 64)
                fd.append((can_id, ln, bytes(self._buf[8:8 + ln]), sec, ns, drops))
        else:
            self.more = True
        return iter(classic), fd


# ----------------------------------------------------------------------------------------------- BCM
class _BcmTimeval(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("usec", ctypes.c_long)]


class _BcmHead(ctypes.Structure):
    _fields_ = [("opcode", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("count", ctypes.c_uint32),
                ("ival1", _BcmTimeval), ("ival2", _BcmTimeval), ("can_id", ctypes.c_uint32),
                ("nframes", ctypes.c_uint32)]


# struct bcm_msg_head ends in `struct can_frame frames[] __attribute__((aligned(8)))`.
BCM_HEAD_SIZE = (ctypes.sizeof(_BcmHead) + 7) // 8 * 8


class BcmSocket:
    """A CAN_BCM socket that only ever asks the kernel to watch: RX_SETUP with a timer (RX_TIMEOUT when a
    cyclic frame is missing) and a content mask (RX_CHANGED only when masked bits or the length change)."""

    def __init__(self, ifname: str, *, allow_transmit: bool = False) -> None:
        s = socket.socket(socket.AF_CAN, socket.SOCK_DGRAM, socket.CAN_BCM)
        try:
            self.ts_fmt = _enable_timestamps(s)
            s.connect((ifname,))
            s.setblocking(False)
        except BaseException:
            s.close()
            raise
        self._sock = s
        self.allow_transmit = allow_transmit
        self._ts = struct.Struct("=" + (self.ts_fmt or "qq"))

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def _write(self, head: _BcmHead, frames: bytes = b"") -> None:
        if head.opcode not in RECEIVE_OPS and not self.allow_transmit:
            raise TransmitRefused(f"BCM opcode {head.opcode} transmits on the bus; allow_transmit is off")
        msg = bytes(head).ljust(BCM_HEAD_SIZE, b"\0") + frames
        self._sock.send(msg)

    def rx_setup(self, key: int, timeout_s: float, mask: bytes) -> None:
        """Watch one id: RX_TIMEOUT after `timeout_s` without it, RX_CHANGED when `mask`ed content or the
        length changes, and once more for the first frame after a timeout (RX_ANNOUNCE_RESUME)."""
        h = _BcmHead()
        h.opcode, h.can_id, h.nframes = RX_SETUP, key, 1
        h.flags = SETTIMER | STARTTIMER | RX_CHECK_DLC | RX_ANNOUNCE_RESUME
        h.ival1.sec, h.ival1.usec = int(timeout_s), round((timeout_s % 1) * 1e6)
        self._write(h, _FRAME.pack(key, 8, mask.ljust(8, b"\0")[:8]))

    def read(self) -> list[tuple[int, int, float, bytes | None]]:
        """Pending notifications: (opcode, can_id, kernel timestamp or 0.0, frame payload or None)."""
        out: list[tuple[int, int, float, bytes | None]] = []
        anc = socket.CMSG_SPACE(16)
        for _ in range(1024):
            try:
                data, ancdata, _flags, _addr = self._sock.recvmsg(BCM_HEAD_SIZE + CANFD_MTU, anc)
            except (BlockingIOError, InterruptedError):
                break
            if len(data) < BCM_HEAD_SIZE:
                continue
            h = _BcmHead.from_buffer_copy(data[:ctypes.sizeof(_BcmHead)])
            ts = 0.0
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind in (SO_TIMESTAMPNS_NEW, SO_TIMESTAMPNS_OLD):
                    sec, ns = self._ts.unpack_from(payload)
                    ts = sec + ns * 1e-9
            frame = None
            if h.nframes and len(data) >= BCM_HEAD_SIZE + CAN_MTU:
                _cid, ln, payload8 = _FRAME.unpack_from(data, BCM_HEAD_SIZE)
                frame = payload8[:min(ln, 8)]
            out.append((h.opcode, h.can_id, ts, frame))
        return out
