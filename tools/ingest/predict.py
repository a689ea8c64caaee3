"""Failure-prediction signals, first version: rising risk per vehicle/component, software-version regressions.

1. Rising risk. Per (vehicle, device, family, component): a continuous-time Poisson CUSUM against the fleet's
   baseline rate for that family/component on the same software version (so a fleet-wide regression does not
   make every car on the bad version "at risk"; that is the version test's job). Designed to detect a rise by
   `rho`; threshold h set so the in-control average run length is `arl0_hours` operating hours:
   expected false alarms = (monitored keys per vehicle) / arl0_hours per vehicle operating hour.
   The baseline is the pooled fleet rate after dropping vehicles that are themselves improbable under it.
2. Version regression (predict_versions.py): each version of a software component against its other
   versions, exact tests and intervals, Bonferroni, guarded against events clustered in a few cars.
Also: rates per family over time, recovery-time distributions. `python -m tools.ingest predict --help`
(predict_cli.py); the tuning is predict_params.py.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .families import BY_KEY, FAMILIES
from .predict_data import Boot, FleetData, Occurrence
from .predict_params import DAY, Params
from .predict_stats import PoissonCusum, poisson_sf, threshold
from .predict_versions import Key, VersionRow, version_rows

# ------------------------------------------------------------------------------------------- baselines
Stratum = tuple[str, str, str]  # (family, component, version of the family's software component)


def version_of(b: Boot, family: str) -> str:
    return b.sw.get(BY_KEY[family].software, "?")


def baselines(fd: FleetData) -> dict[Stratum, float]:
    """Events per operating hour for each stratum, robust to the few vehicles that are degrading."""
    comps: dict[str, set[str]] = defaultdict(set)
    for o in fd.occs:
        comps[o.family].add(o.component)
    boot_of = {(b.vehicle, b.device, b.boot): b for b in fd.boots}
    excluded: set[tuple[str, str, str, str]] = set()  # (vehicle, device, family, component)
    rates: dict[Stratum, float] = {}
    for _ in range(2):
        expo: dict[tuple[str, str], float] = defaultdict(float)           # (family, version) -> hours
        unit_expo: dict[tuple[str, str, str, str], float] = defaultdict(float)
        for b in fd.boots:
            for fam in comps:
                ver = version_of(b, fam)
                expo[(fam, ver)] += b.hours
        counts: dict[Stratum, int] = defaultdict(int)
        unit_counts: dict[tuple[str, str, str, str], int] = defaultdict(int)
        for o in fd.occs:
            ob = boot_of.get((o.vehicle, o.device, o.boot))
            ver = version_of(ob, o.family) if ob else "?"
            if (o.vehicle, o.device, o.family, o.component) not in excluded:
                counts[(o.family, o.component, ver)] += 1
            unit_counts[(o.vehicle, o.device, o.family, o.component)] += 1
        rates = {}
        for fam, cs in comps.items():
            for comp in cs:
                for (f, ver), hours in expo.items():
                    if f == fam and hours > 0:
                        # Half an event when none was seen: a zero baseline would make any event an alarm.
                        rates[(fam, comp, ver)] = max(counts.get((fam, comp, ver), 0), 0.5) / hours
        # Second pass without units whose own count is improbable (p < 1e-4) under the pooled rate.
        for b in fd.boots:
            for fam, cs in comps.items():
                for comp in cs:
                    unit_expo[(b.vehicle, b.device, fam, comp)] += b.hours * rates.get(
                        (fam, comp, version_of(b, fam)), 0.0)
        excluded = {k for k, n in unit_counts.items() if poisson_sf(n, unit_expo.get(k, 0.0)) < 1e-4}
    return rates


def mean_rate(rates: dict[Stratum, float], fd: FleetData, family: str, component: str) -> float:
    hours = num = 0.0
    for b in fd.boots:
        r = rates.get((family, component, version_of(b, family)))
        if r is not None:
            num += r * b.hours
            hours += b.hours
    return num / hours if hours else 0.0


# ------------------------------------------------------------------------------------------ rising risk
@dataclass
class Risk:
    vehicle: str
    device: str
    family: str
    component: str
    events: int
    hours: float
    baseline_per_1000h: float
    h: float
    s_now: float
    alarms: list[float] = field(default_factory=list)
    recent_events: int = 0
    recent_expected: float = 0.0

    @property
    def score(self) -> float:
        return self.s_now / self.h if self.h else 0.0

    @property
    def recent_ratio(self) -> float:
        return self.recent_events / self.recent_expected if self.recent_expected else 0.0


def rising_risk(fd: FleetData, p: Params, rates: dict[Stratum, float] | None = None) -> list[Risk]:
    rates = rates if rates is not None else baselines(fd)
    h_of: dict[tuple[str, str], float] = {}
    by_unit_key: dict[tuple[str, str, str, str], list[Occurrence]] = defaultdict(list)
    for o in fd.occs:
        by_unit_key[(o.vehicle, o.device, o.family, o.component)].append(o)
    mean: dict[tuple[str, str], float] = {}
    recent_from = fd.t_max - p.recent_days * DAY
    out: list[Risk] = []
    for (v, d, fam, comp), occs in by_unit_key.items():
        if (fam, comp) not in h_of:
            mean[(fam, comp)] = mean_rate(rates, fd, fam, comp)
            h_of[(fam, comp)] = threshold(p.rho, p.arl0_hours * mean[(fam, comp)])
        risk = _replay(fd.by_unit.get((v, d), []), occs, rates, fam, comp, PoissonCusum(p.rho, h_of[(fam, comp)]),
                       recent_from)
        out.append(Risk(v, d, fam, comp, len(occs), sum(b.hours for b in fd.by_unit.get((v, d), [])),
                        1000 * mean[(fam, comp)], h_of[(fam, comp)], *risk))
    out.sort(key=lambda r: -r.score)
    return out


def _replay(boots: list[Boot], occs: list[Occurrence], rates: dict[Stratum, float], fam: str, comp: str,
            cs: PoissonCusum, recent_from: float) -> tuple[float, list[float], int, float]:
    """Run the CUSUM along the unit's operating time: (S at the end, alarm times, recent events, expected)."""
    per_boot: dict[str, list[Occurrence]] = defaultdict(list)
    for o in occs:
        per_boot[o.boot].append(o)
    alarms: list[float] = []
    recent_n, recent_exp = 0, 0.0
    for b in boots:
        lam = rates.get((fam, comp, version_of(b, fam)), 0.0)
        per_s = lam * (b.hours / ((b.t1 - b.t0) / 3600)) / 3600 if b.t1 > b.t0 else 0.0  # u per wall second
        pos = b.t0
        for o in sorted(per_boot.pop(b.boot, []), key=lambda x: x.t):
            cs.elapse(per_s * max(0.0, o.t - pos))
            pos = max(pos, o.t)
            if cs.event():
                alarms.append(o.t)
            recent_n += o.t >= recent_from
        cs.elapse(per_s * max(0.0, b.t1 - pos))
        if b.t0 >= recent_from:
            recent_exp += lam * b.hours
    for rest in per_boot.values():  # occurrences of boots we have no extent for: count them, no time passes
        for o in rest:
            if cs.event():
                alarms.append(o.t)
            recent_n += o.t >= recent_from
    return cs.s, alarms, recent_n, recent_exp


# -------------------------------------------------------------------------------------------- versions
def versions(fd: FleetData, p: Params, exclude: set[Key] | None = None) -> list[VersionRow]:
    return version_rows(fd.boots, fd.occs, p, exclude or set())


# ------------------------------------------------------------------------------------ time, recovery
def rates_over_time(fd: FleetData, bin_days: float = 7.0) -> dict[str, list[tuple[float, int, float]]]:
    """family -> [(bin start, events, operating hours)] (a boot counts in the bin it started in)."""
    width = bin_days * DAY
    hours: dict[int, float] = defaultdict(float)
    for b in fd.boots:
        hours[math.floor((b.t0 - fd.t_min) / width)] += b.hours
    counts: dict[tuple[str, int], int] = defaultdict(int)
    for o in fd.occs:
        counts[(o.family, math.floor((o.t - fd.t_min) / width))] += 1
    return {f.key: [(fd.t_min + i * width, counts.get((f.key, i), 0), hours[i]) for i in sorted(hours)]
            for f in FAMILIES}


def quantile(xs: Sequence[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    pos = q * (len(s) - 1)
    lo = math.floor(pos)
    return s[lo] + (s[min(lo + 1, len(s) - 1)] - s[lo]) * (pos - lo)


def recovery(fd: FleetData) -> dict[str, list[float]]:
    """family -> recovery times in seconds (episode durations)."""
    out: dict[str, list[float]] = defaultdict(list)
    for o in fd.occs:
        if o.duration_s is not None and o.duration_s >= 0:
            out[o.family].append(o.duration_s)
    return dict(out)


# ------------------------------------------------------------------------------------------------ CLI
def monitored_keys(rates: dict[Stratum, float]) -> int:
    return len({(f, c) for f, c, _ in rates})


def analyse(fd: FleetData, p: Params) -> dict[str, Any]:
    rates = baselines(fd)
    risks = rising_risk(fd, p, rates)
    vers = versions(fd, p, {(r.vehicle, r.device, r.family, r.component) for r in risks if r.alarms})
    keys = monitored_keys(rates)
    return {
        "params": asdict(p), "vehicles": len({b.vehicle for b in fd.boots}), "operating_hours": fd.hours,
        "t_min": fd.t_min, "t_max": fd.t_max,
        "false_alarms_expected_per_1000_vehicle_hours": 1000 * keys / p.arl0_hours, "monitored_keys": keys,
        # Alarmed keys first, most recent alarm first; then the ones closest to their threshold.
        "at_risk": [_risk_json(r) for r in sorted((r for r in risks if r.alarms or r.score >= 0.5),
                                                   key=lambda r: (-max(r.alarms, default=0.0), -r.score))],
        "regressions": [asdict(r) for r in vers if r.flagged],
        "versions": [asdict(r) for r in vers],
        "recovery": {f: {"n": len(xs), "p50": quantile(xs, 0.5), "p90": quantile(xs, 0.9),
                         "p99": quantile(xs, 0.99)} for f, xs in recovery(fd).items()},
    }


def _risk_json(r: Risk) -> dict[str, Any]:
    return {**asdict(r), "score": r.score, "recent_ratio": r.recent_ratio}
