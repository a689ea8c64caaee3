"""The controller's side of bus health, read without touching a frame.

- `ip -j -d -s link show <if>`: CAN state (ERROR-ACTIVE … BUS-OFF), error counters, restarts, real bitrate.
  Only real CAN controllers have these; vcan reports kind "vcan" and no state.
- /sys/class/net/<if>/statistics: frame and byte counters the kernel keeps for every frame on the bus, so
  frames/s and bus load cost three small file reads per window instead of reading every frame.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import field
from pathlib import Path
from typing import Any

from ...dataclass_shared import dataclass
from .rules import IP_STATES


@dataclass(frozen=True)
class LinkInfo:
    kind: str = ""  # "can", "vcan", ...
    operstate: str = ""
    state: str | None = None  # rules.IP_STATES values
    tec: int | None = None
    rec: int | None = None
    bitrate: int | None = None
    xstats: dict[str, int] = field(default_factory=dict)


def _table(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def parse_ip_link(text: str) -> LinkInfo:
    """Parse `ip -j -d -s link show <if>`; unknown or missing parts stay None (never raises on odd JSON)."""
    try:
        data = json.loads(text)
    except ValueError:
        return LinkInfo()
    if not isinstance(data, list) or not data or not isinstance(data[0], dict):
        return LinkInfo()
    link: dict[str, Any] = data[0]
    info = _table(link.get("linkinfo"))
    kind = str(info.get("info_kind", ""))
    idata = _table(info.get("info_data"))
    state = IP_STATES.get(str(idata.get("state", "")))
    berr = _table(idata.get("berr_counter"))
    bt = _table(idata.get("bittiming"))
    xs = _table(info.get("info_xstats"))

    def num(v: Any) -> int | None:
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    return LinkInfo(kind=kind, operstate=str(link.get("operstate", "")), state=state,
                    tec=num(berr.get("tx")), rec=num(berr.get("rx")), bitrate=num(bt.get("bitrate")),
                    xstats={k: int(v) for k, v in xs.items() if num(v) is not None})


def read_link(ifname: str, timeout_s: float = 5.0) -> LinkInfo:
    """Run ip; an interface that vanished or a missing ip binary gives an empty LinkInfo."""
    try:
        p = subprocess.run(["ip", "-j", "-d", "-s", "link", "show", ifname], capture_output=True, text=True,
                           timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return LinkInfo()
    return parse_ip_link(p.stdout) if p.returncode == 0 else LinkInfo()


def read_counters(ifname: str, kind: str, root: str = "/sys/class/net") -> tuple[int, int] | None:
    """(frames, payload bytes) seen on the bus so far. vcan counts every frame as both tx and rx; a real
    controller counts received frames as rx and this host's own frames as tx, so those add up."""
    d = Path(root) / ifname / "statistics"
    try:
        rxp = int((d / "rx_packets").read_text())
        rxb = int((d / "rx_bytes").read_text())
        if kind == "vcan":
            return rxp, rxb
        return rxp + int((d / "tx_packets").read_text()), rxb + int((d / "tx_bytes").read_text())
    except (OSError, ValueError):
        return None
