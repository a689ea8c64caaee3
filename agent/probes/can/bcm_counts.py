"""How many frames the kernel's broadcast manager (CAN_BCM) received for each watched id.

Why: in `mode = "bcm"` the agent reads only notifications. RX_CHANGED comes when the masked content or the
length changes, RX_TIMEOUT when the id falls silent; a radar sending 33 frames/s with an unchanged status
produces no notification at all, so counting what the agent reads gives `frames: 0`. The kernel counts every
received frame of each RX_SETUP operation (`frames_abs` in net/can/bcm.c, incremented in bcm_rx_handler
before any content filtering) and prints it per socket in /proc/net/can-bcm/<socket inode>:

    rx_op: 101 vcan0 [1]d timeo=600000 # recv 4 (198) => reduction: 98%

"recv 4" are the notifications sent (`frames_filtered`), "(198)" the frames received (`frames_abs`). An
operation that has not received a frame yet is not listed (its count is 0). Reading it is one ~100-byte
procfs read per bus per metrics window, nothing per frame. No thread; parse_bcm_proc is pure.
"""

from __future__ import annotations

import os
import re

PROC_DIR = "/proc/net/can-bcm"

# "rx_op: <can_id hex> <ifname> ... # recv <notifications> (<frames>)"; the id carries the EFF flag bit.
_RX_OP = re.compile(r"^rx_op:\s+([0-9A-Fa-f]+)\s.*#\s*recv\s+(-?\d+)\s+\((-?\d+)\)")


def parse_bcm_proc(text: str) -> dict[int, int]:
    """can_id (as given to RX_SETUP, flags included) → frames the kernel received for it. Lines that are
    not receive operations (the socket header, tx_op lines) are skipped."""
    out: dict[int, int] = {}
    for line in text.splitlines():
        m = _RX_OP.match(line.strip())
        if m:
            out[int(m.group(1), 16)] = max(0, int(m.group(3)))
    return out


def proc_path(sock_fd: int, proc_dir: str = PROC_DIR) -> str:
    """The kernel names each BCM socket's file after the socket's inode number."""
    return os.path.join(proc_dir, str(os.fstat(sock_fd).st_ino))


def read_bcm_counts(path: str) -> dict[int, int] | None:
    """The counts, or None when the kernel does not expose them (no procfs, a hidden /proc/net)."""
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return parse_bcm_proc(f.read())
    except OSError:
        return None
