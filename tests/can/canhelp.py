"""Shared helpers for the CAN tests: real DBCs from opendbc, frame builders, config builders."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import opendbc

DBC_DIR = Path(os.path.dirname(opendbc.__file__)) / "dbc"
FORD = str(DBC_DIR / "FORD_CADS.dbc")
TESLA = str(DBC_DIR / "tesla_can.dbc")
ESR = str(DBC_DIR / "ESR.dbc")
VSS_FRONT = "Vehicle.ADAS.ObstacleDetection.Front.Center.IsError"


@functools.lru_cache(maxsize=1)
def ford_message() -> Any:
    import cantools

    return cantools.database.load_file(FORD, strict=False).get_message_by_name("MRR_Status_Radar")


@functools.lru_cache(maxsize=1)
def tesla_status2() -> Any:
    """DAS_status2 from tesla_can.dbc, which needs the agent's lenient loader (a stray VAL_ table)."""
    from agent.probes.can.dbc import load_dbc

    return load_dbc(TESLA, "test").get_message_by_name("DAS_status2")


@functools.lru_cache(maxsize=64)
def _radar(blocked: int, items: tuple[tuple[str, int], ...]) -> bytes:
    m = ford_message()
    signals = dict(items)
    values = {s.name: 0 for s in m.signals} | {"CAN_XCVR_OPERATIONAL": 1, "CAN_BLOCKAGE_MNR": blocked} | signals
    return bytes(m.encode(values))


def radar_frame(blocked: int = 0, **signals: int) -> bytes:
    """A real MRR_Status_Radar payload encoded by cantools (not by the code under test)."""
    return _radar(blocked, tuple(sorted(signals.items())))


def can_section(buses: list[dict[str, Any]], sensors: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    return {"enabled": True, "bus": buses, "sensor": sensors, **kw}


def agent_config(can: dict[str, Any]) -> Any:
    from agent.config import from_mapping

    return from_mapping({"vehicle": {"id": "VIN1", "device": "hu", "fleet": "t"}, "probes": {"can": can}})
