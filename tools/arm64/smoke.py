"""Runs INSIDE the emulated arm64 Python (qemu-aarch64-static): what the agent needs imports and works there.

Usage: python3.11 smoke.py AGENT_TOML  (prints one JSON object: {check: {"ok": bool, "value"|"error"}})

The agent itself runs next, as `python3.11 -m agent` in its own emulated process (tools/arm64/runner.py):
without binfmt_misc the host kernel cannot exec an arm64 binary, so this script cannot start it itself.
Only the standard library and the agent's own dependencies are imported here.
"""

from __future__ import annotations

import json
import platform
import sys
import traceback
from collections.abc import Callable
from typing import Any

results: dict[str, Any] = {}


def check(name: str) -> Callable[[Callable[[], Any]], None]:
    def wrap(fn: Callable[[], Any]) -> None:
        try:
            results[name] = {"ok": True, "value": fn()}
        except Exception:  # noqa: BLE001 - each check reports; none stops the others
            results[name] = {"ok": False, "error": traceback.format_exc(limit=5)}

    return wrap


@check("interpreter")
def _() -> Any:
    import ssl

    return {"machine": platform.machine(), "python": platform.python_version(), "executable": sys.executable,
            "byteorder": sys.byteorder, "ssl": ssl.OPENSSL_VERSION}


@check("c_extensions")
def _() -> Any:
    import sqlite3

    import msgpack
    import psutil

    packed = msgpack.packb({"k": [1, 2.5, b"\x00\xff", "ü"]}, use_bin_type=True)
    vm = psutil.virtual_memory()
    return {"msgpack": ".".join(map(str, msgpack.version)), "msgpack_c": msgpack.Packer.__module__,
            "msgpack_roundtrip": msgpack.unpackb(packed, raw=False) == {"k": [1, 2.5, b"\x00\xff", "ü"]},
            "psutil": psutil.__version__, "cpu_count": psutil.cpu_count(), "mem_total_mib": vm.total >> 20,
            "rss_mib": round(psutil.Process().memory_info().rss / 2**20, 1), "sqlite": sqlite3.sqlite_version}


@check("pure_python_wheels")
def _() -> Any:
    import can
    import paho.mqtt

    with can.Bus(interface="virtual", channel="smoke") as tx, can.Bus(interface="virtual", channel="smoke") as rx:
        tx.send(can.Message(arbitration_id=0x18FEF100, is_extended_id=True, data=[1, 2, 3]))
        msg = rx.recv(5.0)
    return {"paho_mqtt": paho.mqtt.__version__, "python_can": can.__version__, "paho_file": paho.mqtt.__file__,
            "can_roundtrip": None if msg is None else [msg.arbitration_id, msg.data.hex()]}


@check("agent_config")
def _() -> Any:
    from agent import __version__
    from agent.config import load

    cfg = load(sys.argv[1])
    return {"agent": __version__, "vehicle": cfg.vehicle.id, "probes": sorted(cfg.probes), "digest": cfg.digest}


json.dump(results, sys.stdout)
sys.stdout.write("\n")
