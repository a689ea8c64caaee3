"""Precursor families: which stored episodes and events count as early signs of a failing component.

A family names the record names it takes, an optional rule on the fields (a link loss counts only when its
cause is the terminal, not a tunnel), where the affected component comes from, and which software component
(from the birth inventory) it is judged against for version regressions. The fleet simulator emits exactly
these names, so the prediction is evaluated on the same vocabulary the probes use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

Fields = Mapping[str, Any]


@dataclass(frozen=True)
class Family:
    key: str
    title: str
    names: tuple[str, ...]
    software: str                        # software component whose version is compared
    component: Callable[[Fields], str]   # affected component of one occurrence
    accept: Callable[[Fields], bool] = lambda f: True


def _const(name: str) -> Callable[[Fields], str]:
    return lambda f: name


def _field(key: str, default: str) -> Callable[[Fields], str]:
    def get(f: Fields) -> str:
        v = f.get(key)
        return str(v)[:64] if isinstance(v, (str, int)) and not isinstance(v, bool) else default
    return get


# Environmental causes: a dirty or snow-covered radar needs cleaning, not a part; it is not a precursor.
ENVIRONMENTAL = frozenset({"blockage", "weather", "snow", "dirt"})

FAMILIES: tuple[Family, ...] = (
    Family("freeze", "Screen freezes", ("display.freeze", "hmi.freeze"), "hmi", _const("display")),
    Family("black_screen", "Black screens", ("display.black", "hmi.black_screen"), "hmi", _const("display")),
    Family("link_terminal", "Link losses (terminal defect)", ("link.loss", "connectivity.loss"), "modem",
           _const("modem"), lambda f: f.get("cause") == "terminal"),
    Family("sensor", "Sensor timeouts/faults", ("can.timeout", "sensor.fault"), "adas",
           _field("sensor", "sensor"), lambda f: f.get("cause") not in ENVIRONMENTAL),
    Family("can_errors", "CAN error bursts", ("can.error", "can.bus_off", "can.error_passive"), "gateway",
           lambda f: "can:" + _field("bus", "?")(f)),
)
BY_KEY = {f.key: f for f in FAMILIES}
NAMES: dict[str, tuple[Family, ...]] = {}
for _f in FAMILIES:
    for _n in _f.names:
        NAMES[_n] = (*NAMES.get(_n, ()), _f)


def classify(name: str, fields: Fields) -> tuple[Family, str] | None:
    """(family, component) of one episode or event, or None when it is not a precursor."""
    for fam in NAMES.get(name, ()):
        if fam.accept(fields):
            return fam, fam.component(fields)
    return None
