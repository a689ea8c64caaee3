"""The software inventory that travels in the birth message: what is running on this unit right now,
so the backend can split failure rates by software version after an OTA."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import __version__


def os_release(path: str = "/etc/os-release") -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        text = Path(path).read_text()
    except OSError:
        return out
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip().strip('"')
    return out


def inventory(components: Mapping[str, str], swin: Mapping[str, str] | None = None) -> dict[str, Any]:
    """`swin`: software identification numbers by component (software.py), sent only when there are any."""
    rel = os_release()
    out = {
        "agent": __version__,
        "os": rel.get("PRETTY_NAME", ""),
        "os_version": rel.get("VERSION_ID", ""),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "hostname": os.uname().nodename,
        "components": dict(components),
        "argv0": os.path.basename(sys.argv[0]),
    }
    if swin:
        out["swin"] = dict(swin)
    return out
