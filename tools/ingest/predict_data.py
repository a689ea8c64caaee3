"""Load what the failure-prediction signals need from a store: drives (boots) with their operating time and
software versions, and precursor occurrences (episodes and events classified into families).

Works on either store through `Store.query` ("?" placeholders). Operating time of a boot is the span of its
records' monotonic time (robust to wall-clock steps). A boot without a birth message inherits the versions
of the unit's previous boot: births can be missed (retained status is only the latest one per unit).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .families import NAMES, classify
from .rows import SWIN_PREFIX
from .store import Store

Unit = tuple[str, str]  # (vehicle, device)


@dataclass(frozen=True)
class Boot:
    vehicle: str
    device: str
    boot: str
    t0: float
    t1: float
    hours: float
    sw: Mapping[str, str]


@dataclass(frozen=True)
class Occurrence:
    vehicle: str
    device: str
    boot: str
    family: str
    component: str
    t: float
    duration_s: float | None
    name: str


@dataclass
class FleetData:
    boots: list[Boot]
    occs: list[Occurrence]
    by_unit: dict[Unit, list[Boot]] = field(default_factory=dict)
    t_min: float = 0.0
    t_max: float = 0.0

    def __post_init__(self) -> None:
        self.boots.sort(key=lambda b: (b.vehicle, b.device, b.t0))
        self.occs.sort(key=lambda o: o.t)
        self.by_unit = defaultdict(list)
        for b in self.boots:
            self.by_unit[(b.vehicle, b.device)].append(b)
        self.t_min = min((b.t0 for b in self.boots), default=0.0)
        self.t_max = max((b.t1 for b in self.boots), default=0.0)

    @property
    def hours(self) -> float:
        return sum(b.hours for b in self.boots)

    def cut(self, until: float) -> FleetData:
        """What was known at `until` (boots started before it, clipped; occurrences before it)."""
        boots = []
        for b in self.boots:
            if b.t0 < until:
                end = min(b.t1, until)
                frac = (end - b.t0) / (b.t1 - b.t0) if b.t1 > b.t0 else 1.0
                boots.append(Boot(b.vehicle, b.device, b.boot, b.t0, end, b.hours * frac, b.sw))
        return FleetData(boots, [o for o in self.occs if o.t < until])


def _fields(v: Any) -> dict[str, Any]:
    if isinstance(v, dict):
        return v
    if isinstance(v, str) and v:
        try:
            d = json.loads(v)
        except ValueError:
            return {}
        return d if isinstance(d, dict) else {}
    return {}


def software_view(sw: Mapping[str, str], by: str) -> dict[str, str]:
    """A boot's software as the version test sees it: by "version", the versions (SWIN rows left out); by
    "swin", each component's SWIN where the vehicle reported one, else its version — so a regression can be
    pinned to one software build even when two builds carry the same version string."""
    versions = {c: v for c, v in sw.items() if not c.startswith(SWIN_PREFIX)}
    if by == "swin":
        for c, v in sw.items():
            if c.startswith(SWIN_PREFIX):
                versions[c[len(SWIN_PREFIX):]] = f"SWIN {v}"
    return versions


def load(store: Store, by: str = "version") -> FleetData:
    sw_rows: dict[tuple[str, str, str], dict[str, str]] = defaultdict(dict)
    raw_sw: dict[tuple[str, str, str], dict[str, str]] = defaultdict(dict)
    for v, d, boot, comp, ver in store.query("SELECT vehicle, device, boot, component, version FROM software"):
        raw_sw[(v, d, boot)][comp] = ver
    for k, comps in raw_sw.items():
        sw_rows[k] = software_view(comps, by)
    raw = store.query("SELECT vehicle, device, boot, first_t, last_t, first_mono, last_mono FROM boots "
                      "ORDER BY vehicle, device, first_t")
    boots: list[Boot] = []
    last: dict[Unit, Mapping[str, str]] = {}
    for v, d, boot, t0, t1, m0, m1 in raw:
        span = (m1 - m0) if m1 is not None and m0 is not None and m1 >= m0 else max(0.0, t1 - t0)
        sw = sw_rows.get((v, d, boot)) or last.get((v, d), {})
        last[(v, d)] = sw
        boots.append(Boot(v, d, boot, float(t0), float(t1), span / 3600, sw))
    occs: list[Occurrence] = []
    names = sorted(NAMES)
    marks = ", ".join("?" * len(names))
    for v, d, boot, name, tb, te, dur, fb, fe in store.query(
            "SELECT vehicle, device, boot, name, t_begin, t_end, duration_s, fields_begin, fields_end FROM episodes "
            f"WHERE name IN ({marks})", *names):
        fields = {**_fields(fb), **_fields(fe)}
        hit = classify(name, fields)
        t = tb if tb is not None else (te - (dur or 0.0) if te is not None else None)
        if hit is None or t is None:
            continue
        if dur is None and tb is not None and te is not None:
            dur = te - tb
        occs.append(Occurrence(v, d, boot or "", hit[0].key, hit[1], float(t), dur, name))
    for v, d, boot, name, t, f in store.query(
            f"SELECT vehicle, device, boot, name, t, fields FROM records WHERE kind = 'event' AND name IN ({marks})",
            *names):
        hit = classify(name, _fields(f))
        if hit is not None:
            occs.append(Occurrence(v, d, boot, hit[0].key, hit[1], float(t), None, name))
    return FleetData(boots, occs)
