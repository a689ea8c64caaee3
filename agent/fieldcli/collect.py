"""What `icvq dump` gathers about the machine besides the agent's own state. Every collector is bounded
in time and size and returns (data, description): a missing tool or permission is noted, never fatal."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

CMD_TIMEOUT_S = 8.0
MAX_LOG_LINES = 5000
MAX_LOG_BYTES = 4 * 2**20
KERNEL_LINE = re.compile(r"\b(drm|i915|amdgpu|nouveau|radeon|msm|vc4|v3d|imx-?drm|etnaviv|panfrost|mali|"
                         r"fbcon|fb\d+|framebuffer|hdmi|dsi|edid|vblank|flip_done|"
                         r"v?can\d+|vx?can|can:|can_raw|can_bcm|can_gw|can_dev|slcan|gs_usb|peak_usb|mcp251xfd?|"
                         r"flexcan|m_can|rcar_can|sja1000|bus-off|error-passive|error-warning)(?=\W|$)", re.I)
CAN_KINDS = {"can", "vcan", "vxcan"}


def run(argv: list[str], timeout_s: float = CMD_TIMEOUT_S) -> tuple[int, bytes, str]:
    try:
        p = subprocess.run(argv, capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL,
                           env={**os.environ, "LC_ALL": "C", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"})
    except FileNotFoundError:
        return 127, b"", f"{argv[0]} not installed"
    except subprocess.TimeoutExpired:
        return 124, b"", f"{argv[0]} timed out after {timeout_s:.0f} s"
    return p.returncode, p.stdout, p.stderr.decode(errors="replace").strip()


def _tail_bytes(data: bytes) -> bytes:
    lines = data.splitlines(keepends=True)[-MAX_LOG_LINES:]
    out = b"".join(lines)
    return out[-MAX_LOG_BYTES:]


def agent_log(log_file: str | None) -> tuple[bytes | None, str]:
    rc, out, err = run(["journalctl", "-u", "icvq-agent", "--no-pager", "-o", "short-iso-precise",
                        "-n", str(MAX_LOG_LINES)])
    entries = [ln for ln in out.splitlines() if ln.strip() and not ln.startswith(b"-- ")]
    if rc == 0 and entries:
        return _tail_bytes(out), f"journalctl -u icvq-agent (last {len(entries)} lines)"
    why = err or ("no entries for icvq-agent (not in group systemd-journal/adm?)" if rc == 0 else f"exit {rc}")
    if log_file:
        try:
            with open(log_file, "rb") as f:
                f.seek(max(0, os.fstat(f.fileno()).st_size - MAX_LOG_BYTES))
                data = _tail_bytes(f.read())
            n = data.count(b"\n")
            return data, f"log file {log_file} (last {n} lines); journal: {why}"
        except OSError as e:
            return None, f"journal: {why}; log file {log_file}: {e.strerror}"
    return None, f"journal: {why}; no log file given (--log-file or ICVQ_LOG_FILE)"


def kernel_log() -> tuple[bytes | None, str]:
    rc, out, err = run(["dmesg", "--time-format", "iso"])
    if rc != 0:
        rc, out, err = run(["dmesg"])
    if rc != 0:
        return None, f"dmesg: {err or f'exit {rc}'} (kernel.dmesg_restrict? try sudo)"
    lines = [ln for ln in out.decode(errors="replace").splitlines() if KERNEL_LINE.search(ln)]
    lines = lines[-MAX_LOG_LINES:]
    return "".join(ln + "\n" for ln in lines).encode(), f"dmesg, {len(lines)} DRM/display/CAN lines"


def can_links() -> tuple[Any, str]:
    rc, out, err = run(["ip", "-j", "-d", "-s", "link"])
    if rc != 0:
        return None, f"ip -j -d -s link: {err or f'exit {rc}'}"
    try:
        links = json.loads(out)
    except ValueError:
        return None, "ip printed no JSON"
    can = [lk for lk in links if lk.get("link_type") == "can"
           or (lk.get("linkinfo") or {}).get("info_kind") in CAN_KINDS]
    return can, f"ip -j -d -s link: {len(can)} CAN interfaces of {len(links)}"


def host_summary(spool_dir: str | None) -> dict[str, Any]:
    vm = psutil.virtual_memory()
    sw = psutil.swap_memory()
    out: dict[str, Any] = {
        "time": time.time(), "boot_time": psutil.boot_time(), "cpu_count": psutil.cpu_count(),
        "loadavg": os.getloadavg(), "cpu_pct": psutil.cpu_percent(0.2),
        "memory": {"total": vm.total, "available": vm.available, "percent": vm.percent},
        "swap": {"total": sw.total, "used": sw.used}, "disks": {}, "processes": len(psutil.pids()),
    }
    for mp in {"/", spool_dir or "/var/lib/icvq"}:
        try:
            du = psutil.disk_usage(mp)
            out["disks"][mp] = {"total": du.total, "free": du.free, "percent": du.percent}
        except OSError:
            continue
    # Names only, never command lines: those can carry credentials of other programs.
    procs = []
    for p in psutil.process_iter(["pid", "name", "memory_info", "cpu_times"]):
        try:
            mi, ct = p.info["memory_info"], p.info["cpu_times"]
            procs.append({"pid": p.info["pid"], "name": p.info["name"], "rss": mi.rss if mi else 0,
                          "cpu_s": round(ct.user + ct.system, 1) if ct else 0})
        except psutil.Error:
            continue
    out["top_rss"] = sorted(procs, key=lambda x: -x["rss"])[:15]
    return out


def uname() -> dict[str, str]:
    u = os.uname()
    return {"sysname": u.sysname, "nodename": u.nodename, "release": u.release, "version": u.version,
            "machine": u.machine, "python": platform.python_version()}


def os_release() -> bytes | None:
    for p in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            return Path(p).read_bytes()
        except OSError:
            continue
    return None
