"""Opening a byte stream the same way whether it is a device (/dev/kmsg, /dev/input/eventN), a FIFO (tests,
replays) or a regular file (a captured log)."""

from __future__ import annotations

import os
import stat

from ...dataclass_shared import dataclass


@dataclass
class Stream:
    fd: int
    # select() on a regular file always says "readable", so those are polled on each tick instead.
    selectable: bool
    is_fifo: bool

    def close(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            finally:
                self.fd = -1


def open_stream(path: str) -> Stream:
    st = os.stat(path)
    fifo = stat.S_ISFIFO(st.st_mode)
    # A FIFO opened read-only reports EOF for ever once its last writer goes; holding a write end ourselves
    # keeps it a quiet, blocking-style source that a new writer can reattach to.
    flags = (os.O_RDWR if fifo else os.O_RDONLY) | os.O_NONBLOCK | os.O_CLOEXEC
    fd = os.open(path, flags)
    return Stream(fd, selectable=not stat.S_ISREG(st.st_mode), is_fifo=fifo)
