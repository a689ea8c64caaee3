"""Following the kernel log: /dev/kmsg (one record per read) or a FIFO/file in the same text format.

Record: `prio,seq,usec_monotonic,flags;text\n`, then optional continuation lines starting with a space
(` SUBSYSTEM=drm`). read() fails with EPIPE when the ring buffer overwrote records we had not read yet; the
next read returns the oldest record still there, and the jump in `seq` says how many were lost.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable

from ... import inherited
from ...dataclass_shared import dataclass
from .streams import Stream, open_stream

KMSG_DEVICE = "/dev/kmsg"

_PREFIX = re.compile(rb"^(\d+),(\d+),(\d+),([^;]*);")
READ_SIZE = 8192          # /dev/kmsg fails with EINVAL when the buffer is shorter than the record
MAX_READS_PER_CALL = 512  # a log storm must not starve the other display signals
MAX_PENDING = 65536       # bytes of an unterminated line before it is dropped as malformed


@dataclass(frozen=True)
class KmsgRecord:
    prio: int
    seq: int
    usec: int
    text: str

    @property
    def level(self) -> int:
        return self.prio & 7


def parse_record(line: bytes) -> KmsgRecord | None:
    """One record line without its newline; None when it does not follow the kmsg format."""
    m = _PREFIX.match(line)
    if not m:
        return None
    try:
        prio, seq, usec = int(m[1]), int(m[2]), int(m[3])
    except ValueError:
        return None
    return KmsgRecord(prio, seq, usec, line[m.end():].decode("utf-8", "replace"))


class KmsgReader:
    """Non-blocking reader; `read()` returns every complete record available now."""

    def __init__(self, path: str, *, from_start: bool = False,
                 read: Callable[[int, int], bytes] = os.read) -> None:
        self.path = path
        self.from_start = from_start
        self._read = read
        self.stream: Stream | None = None
        self._buf = b""
        self._last_seq: int | None = None
        self.lost = 0          # records the ring buffer overwrote before we read them (seq gaps)
        self.overruns = 0      # EPIPE reads
        self.malformed = 0
        self.seq_resets = 0    # seq went backwards: a replay restarted or the source was swapped

    def open(self) -> None:
        self.close()
        # Under the shipped unit /dev/kmsg cannot be opened by path (no CAP_SYSLOG, ProtectKernelLogs);
        # systemd hands it to us on stdin instead (agent/inherited.py).
        fd = inherited.kmsg_fd() if self.path == KMSG_DEVICE else None
        self.stream = Stream(fd, selectable=True, is_fifo=False) if fd is not None else open_stream(self.path)
        self._buf = b""
        if not self.from_start and not self.stream.is_fifo:
            try:
                # History is not news: a hang logged before we started was reported by whoever ran then.
                os.lseek(self.stream.fd, 0, os.SEEK_END)
            except OSError:
                pass

    def close(self) -> None:
        if self.stream:
            self.stream.close()
            self.stream = None

    def read(self) -> list[KmsgRecord]:
        if not self.stream:
            return []
        out: list[KmsgRecord] = []
        for _ in range(MAX_READS_PER_CALL):
            try:
                chunk = self._read(self.stream.fd, READ_SIZE)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError as e:
                if e.errno == errno.EPIPE:
                    self.overruns += 1
                    continue
                raise
            if not chunk:
                break
            self._buf += chunk
            self._split(out)
        return out

    def _split(self, out: list[KmsgRecord]) -> None:
        *lines, self._buf = self._buf.split(b"\n")
        if len(self._buf) > MAX_PENDING:
            self.malformed += 1
            self._buf = b""
        for line in lines:
            if not line or line[:1] == b" ":
                continue  # continuation lines carry KEY=VALUE metadata we do not need
            rec = parse_record(line)
            if rec is None:
                self.malformed += 1
                continue
            self._track_seq(rec.seq)
            out.append(rec)

    def _track_seq(self, seq: int) -> None:
        last = self._last_seq
        if last is not None:
            if seq > last + 1:
                self.lost += seq - last - 1
            elif seq <= last:
                self.seq_resets += 1
        self._last_seq = seq
