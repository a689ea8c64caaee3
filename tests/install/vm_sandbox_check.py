"""Runs inside the tools/vm guest as icvq-vmcheck.service: the shipped unit's user, groups, standard input and
hardening, with this script as ExecStart (tests/install/dropins/vm-check.conf).

Prints one JSON object: for each check {"ok": true, "value": ...} or {"ok": false, "error": "..."}. The host
test decides what is expected; this script only observes. Checks that the sandbox must REFUSE record the
errno they got, so a directive that silently did nothing (a kernel without seccomp, cgroup BPF...) shows.
"""

from __future__ import annotations

import ctypes
import errno
import grp
import json
import mmap
import os
import pwd
import socket
import stat
import struct
import subprocess
import sys
import traceback
from collections.abc import Callable
from typing import Any

FRAME = "=IB3x8s"  # struct can_frame
# The guest also carries the agent's test traffic (cangen, ids 0x123/0x124): receive only our own ids.
RAW_ID, BCM_ID, PYCAN_ID = 0x7A1, 0x7A2, 0x18FEF1A3
SFF_ONLY = 0x7FF | socket.CAN_EFF_FLAG
BCM_HEAD = "@3I4l2I0q"  # struct bcm_msg_head, native alignment
results: dict[str, Any] = {}


def check(name: str) -> Callable[[Callable[[], Any]], None]:
    def wrap(fn: Callable[[], Any]) -> None:
        try:
            results[name] = {"ok": True, "value": fn()}
        except Exception:  # noqa: BLE001 - every check reports, none aborts the others
            results[name] = {"ok": False, "error": traceback.format_exc()}

    return wrap


def refused(fn: Callable[[], Any]) -> str:
    """Run fn, which the sandbox should refuse: the errno name it failed with, or "allowed"."""
    try:
        fn()
    except OSError as e:
        return errno.errorcode.get(e.errno or 0, str(e.errno))
    return "allowed"


def proc_status() -> dict[str, str]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


@check("identity")
def _() -> Any:
    st = proc_status()
    return {
        "user": pwd.getpwuid(os.getuid()).pw_name,
        "group": grp.getgrgid(os.getgid()).gr_name,
        "groups": sorted(grp.getgrgid(g).gr_name for g in os.getgroups()),
        "cap_eff": st["CapEff"], "cap_bnd": st["CapBnd"], "cap_amb": st["CapAmb"],
        "no_new_privs": st["NoNewPrivs"], "seccomp": st["Seccomp"],
        "umask": st.get("Umask", ""),
    }


@check("stdin_kmsg")
def _() -> Any:
    st = os.fstat(0)
    flags = os.get_blocking(0)
    os.set_blocking(0, False)
    record = os.read(0, 8192).decode("utf-8", "replace")  # /dev/kmsg: one record per read
    return {
        "char_device": stat.S_ISCHR(st.st_mode), "rdev": [os.major(st.st_rdev), os.minor(st.st_rdev)],
        "was_blocking": flags, "record": record.splitlines()[0] if record else "",
        "write": refused(lambda: os.write(0, b"<6>icvq: must not be writable\n")),
    }


@check("kmsg_by_path")
def _() -> Any:
    # ProtectKernelLogs=yes: the path itself is inaccessible; the fd above is the only way in.
    return refused(lambda: os.close(os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)))


def raw_rx(can_id: int) -> socket.socket:
    rx = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
    rx.setsockopt(socket.SOL_CAN_RAW, socket.CAN_RAW_FILTER, struct.pack("=II", can_id, SFF_ONLY))
    rx.bind(("vcan0",))
    rx.settimeout(5.0)
    return rx


@check("af_can_raw")
def _() -> Any:
    tx = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
    rx = raw_rx(RAW_ID)
    with tx, rx:
        tx.bind(("vcan0",))
        tx.send(struct.pack(FRAME, RAW_ID, 4, bytes.fromhex("deadbeef")))
        can_id, dlc, data = struct.unpack(FRAME, rx.recv(16))
    return {"id": can_id, "data": data[:dlc].hex()}


@check("af_can_bcm")
def _() -> Any:
    rx = raw_rx(BCM_ID)
    bcm = socket.socket(socket.AF_CAN, socket.SOCK_DGRAM, socket.CAN_BCM)
    with rx, bcm:
        bcm.connect(("vcan0",))
        frame = struct.pack(FRAME, BCM_ID, 2, bytes.fromhex("cafe"))
        bcm.send(struct.pack(BCM_HEAD, socket.CAN_BCM_TX_SEND, 0, 0, 0, 0, 0, 0, BCM_ID, 1) + frame)
        can_id, dlc, data = struct.unpack(FRAME, rx.recv(16))
    return {"id": can_id, "data": data[:dlc].hex()}


@check("python_can")
def _() -> Any:
    import can

    only = [{"can_id": PYCAN_ID, "can_mask": 0x1FFFFFFF, "extended": True}]
    with can.Bus(interface="socketcan", channel="vcan0") as tx, \
            can.Bus(interface="socketcan", channel="vcan0", can_filters=only) as rx:
        tx.send(can.Message(arbitration_id=PYCAN_ID, is_extended_id=True, data=[1, 2, 3]))
        msg = rx.recv(5.0)
    return None if msg is None else {"id": msg.arbitration_id, "data": msg.data.hex(), "version": can.__version__}


@check("netlink")
def _() -> Any:
    import psutil

    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as s:  # NETLINK_ROUTE
        s.bind((0, 0))
    out = subprocess.run(["ip", "-j", "-d", "-s", "link", "show", "vcan0"], capture_output=True, text=True,
                         check=True, stdin=subprocess.DEVNULL)
    (link,) = json.loads(out.stdout)
    return {"ip": {"ifname": link["ifname"], "link_type": link["link_type"], "flags": link["flags"]},
            "psutil_if": sorted(psutil.net_if_stats()), "psutil": psutil.__version__}


@check("proc_of_others")
def _() -> Any:
    # ProtectProc=default: the display probe watches the HMI process of another user.
    import psutil

    with open("/proc/1/stat") as f:
        comm = f.read().split()[1]
    return {"pid1": comm, "n_pids": len(psutil.pids())}


@check("state_dir")
def _() -> Any:
    path = "/var/lib/icvq/vmcheck.tmp"
    with open(path, "w") as f:
        f.write("ok")
    mode = stat.S_IMODE(os.stat(path).st_mode)
    os.unlink(path)
    return {"file_mode": oct(mode)}


@check("refused")
def _() -> Any:
    def mmap_wx() -> None:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC).close()

    def write_owned() -> None:
        # A directory the icvq user owns (vm_guest_run.py made it): only the read-only mount stops us.
        with open("/opt/icvq-vmtest/icvq-owned/vmcheck", "w"):
            pass

    def af_packet() -> None:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()

    # /dev/ttyS0's twin that vm_guest_run.py made for us (owner icvq, 0600): file permissions allow the open,
    # so a refusal can only come from the unit (DevicePolicy=closed: the device cgroup answers EPERM), never
    # from how the guest's /dev/ttyS0 happens to be owned (root 0600 on some machines: EACCES).
    tty_node = "/dev/icvq-vmtest-ttyS0"

    def tty() -> None:
        os.close(os.open(tty_node, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY))

    def tty_dac() -> str:
        st = os.stat(tty_node)
        same = st.st_rdev == os.stat("/dev/ttyS0").st_rdev
        return f"{pwd.getpwuid(st.st_uid).pw_name} {oct(stat.S_IMODE(st.st_mode))}{'' if same else ' OTHER DEVICE'}"

    def unshare_user() -> None:
        # Last: if it were allowed, this process would sit in a new user namespace afterwards.
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER; os.unshare needs Python 3.12
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return {
        "mmap_write_exec": refused(mmap_wx),  # MemoryDenyWriteExecute=yes
        "write_owned_dir": refused(write_owned),  # ProtectSystem=strict
        "list_root": refused(lambda: os.listdir("/root")),  # ProtectHome=yes
        "root_mode": oct(stat.S_IMODE(os.stat("/root").st_mode)),  # 0o0: systemd's inaccessible node, not 0o700
        "af_packet": refused(af_packet),  # RestrictAddressFamilies=
        "setpriority": refused(lambda: os.setpriority(os.PRIO_PROCESS, 0, 15)),  # ~@resources
        "tty_device": refused(tty),  # DevicePolicy=closed (ttyS0 is not on the allow-list)
        "tty_owner": tty_dac(),
        "unshare_user": refused(unshare_user),  # RestrictNamespaces=yes (Debian allows unprivileged userns)
    }


@check("cgroup_limits")
def _() -> Any:
    with open("/proc/self/cgroup") as f:
        path = f.read().strip().split("::", 1)[1]
    base = f"/sys/fs/cgroup{path}"
    out: dict[str, Any] = {"cgroup": path}
    for name in ("memory.max", "memory.high", "cpu.max", "pids.max"):
        with open(f"{base}/{name}") as f:
            out[name] = f.read().strip()
    out["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
    return out


json.dump(results, sys.stdout)
sys.stdout.write("\n")
