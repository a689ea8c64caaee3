"""Descriptors systemd opens for us.

The unit sets `StandardInput=file:/dev/kmsg`: systemd opens the kernel log as root and hands it over as fd 0,
so the agent reads kmsg with no capability at all (with kernel.dmesg_restrict=1 an unprivileged open() gets
EPERM, but reading an inherited descriptor works). We keep a private copy and put /dev/null on fd 0 so that
nothing else reads the log by accident.
"""

from __future__ import annotations

import os
import stat

KMSG_MAJOR, KMSG_MINOR = 1, 11
_kmsg_fd: int | None = None


def is_kmsg(fd: int) -> bool:
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return stat.S_ISCHR(st.st_mode) and (os.major(st.st_rdev), os.minor(st.st_rdev)) == (KMSG_MAJOR, KMSG_MINOR)


def adopt_stdin_kmsg() -> bool:
    """Call once at start-up, before anything reads stdin. Returns True when fd 0 was the kernel log."""
    global _kmsg_fd
    if _kmsg_fd is not None or not is_kmsg(0):
        return _kmsg_fd is not None
    _kmsg_fd = os.dup(0)
    os.set_inheritable(_kmsg_fd, False)
    os.set_blocking(_kmsg_fd, False)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return True


def kmsg_fd() -> int | None:
    """A new descriptor for the inherited kernel log (the caller closes it), or None when we were not given
    one. Copies share the read position, which is what a reopening reader wants."""
    return os.dup(_kmsg_fd) if _kmsg_fd is not None else None
