"""Score the prediction signals on simulated fleets with known injected degradations and a known regression.

Rising risk: a degradation (vehicle, family, component, onset, failure) is detected when its key raises an
alarm between onset and failure; lead time = failure - first such alarm (days, and the vehicle's operating
hours in between). An alarm up to 7 days after the failure is "late"; every other alarm is a false alarm
(compared with the design rate keys / ARL0). Version regression: the version table is recomputed on the data
known at the end of each day; detection delay = first daily look that flags hmi 3.3.0 for freezes, counted
from the start of its rollout; any other (component, version, family) flagged at any daily look is a false
flag (daily looks are repeated tests: this counts them honestly rather than only at the end).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .predict import baselines, monitored_keys, rising_risk
from .predict_data import FleetData, load
from .predict_params import DAY, Params
from .predict_versions import VersionAgg, VersionRow
from .store import SqliteStore

LATE_S = 7 * DAY
PEAK_BINS = ("< 0.5/h", "0.5-1/h", ">= 1/h")

Alarm = tuple[str, str, str, float]  # (vehicle, family, component, t)


@dataclass
class SweepTotal:
    degraded: int = 0
    detected: int = 0
    false: int = 0
    hours: float = 0.0
    leads: list[float] = field(default_factory=list)  # per-seed median lead days

    per_peak: dict[str, list[int]] = field(default_factory=lambda: {k: [0, 0] for k in PEAK_BINS})

    def add(self, s: dict[str, Any]) -> None:
        for k, (a, n) in s["per_peak"].items():
            self.per_peak[k][0] += a
            self.per_peak[k][1] += n
        self.degraded += s["degraded"]
        self.detected += s["detected"]
        self.false += s["false_alarms"]
        self.hours += s["operating_hours"]
        if s["detected"]:
            self.leads.append(s["lead_days_median"])


def hours_between(fd: FleetData, vehicle: str, t0: float, t1: float) -> float:
    return sum(b.hours for (v, _d), boots in fd.by_unit.items() if v == vehicle for b in boots if t0 <= b.t0 < t1)


def score_risk(fd: FleetData, alarms: list[Alarm], truth: dict[str, Any], keys: int, p: Params) -> dict[str, Any]:
    degraded = truth["degraded"]
    by_key: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for v, f, c, t in alarms:
        by_key[(v, f, c)].append(t)
    explained: set[tuple[str, str, str, float]] = set()
    leads: list[float] = []
    lead_h: list[float] = []
    late = 0
    per_family: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # family -> [detected, degraded]
    per_peak: dict[str, list[int]] = defaultdict(lambda: [0, 0])    # precursor rate at failure -> same
    for d in degraded:
        key = (d["vehicle"], d["family"], d["component"])
        ts = sorted(by_key.get(key, []))
        hits = [t for t in ts if d["onset_t"] <= t <= d["fail_t"]]
        per_family[d["family"]][1] += 1
        peak = PEAK_BINS[sum(d["peak_per_h"] >= b for b in (0.5, 1.0))]
        per_peak[peak][1] += 1
        for t in ts:
            if d["onset_t"] <= t <= d["fail_t"] + LATE_S:
                explained.add((*key, t))
        if hits:
            per_family[d["family"]][0] += 1
            per_peak[peak][0] += 1
            leads.append((d["fail_t"] - hits[0]) / DAY)
            lead_h.append(hours_between(fd, d["vehicle"], hits[0], d["fail_t"]))
        elif any(d["fail_t"] < t <= d["fail_t"] + LATE_S for t in ts):
            late += 1
    false = [a for a in alarms if a not in explained]
    hours = fd.hours
    return {"degraded": len(degraded), "detected": len(leads), "late": late,
            "detection_rate": len(leads) / len(degraded) if degraded else float("nan"),
            "lead_days_median": statistics.median(leads) if leads else float("nan"),
            "lead_days_p25": _q(leads, 0.25), "lead_days_p75": _q(leads, 0.75),
            "lead_hours_median": statistics.median(lead_h) if lead_h else float("nan"),
            "false_alarms": len(false), "operating_hours": hours,
            "false_per_1000h": 1000 * len(false) / hours if hours else float("nan"),
            "false_per_1000h_design": 1000 * keys / p.arl0_hours,
            "per_family": {f: f"{a}/{n}" for f, (a, n) in sorted(per_family.items())},
            "per_peak": {k: per_peak[k] for k in PEAK_BINS}}


def _q(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def score_versions(fd: FleetData, truth: dict[str, Any], p: Params, alarms: list[Alarm] | None = None,
                   ) -> dict[str, Any]:
    """Daily looks at the version table on the data known so far; a unit's family leaves the counts once it
    has a rising-risk alarm (as `predict` does with the alarms it knows)."""
    reg = truth["regression"]
    target = (reg["component"], reg["version"], reg["family"])
    first_alarm: dict[tuple[str, str, str], float] = {}
    for v, f, c, t in alarms or []:
        first_alarm[(v, f, c)] = min(t, first_alarm.get((v, f, c), t))
    devices = {b.vehicle: b.device for b in fd.boots}
    boots = sorted(fd.boots, key=lambda b: b.t0)
    boot_of = {(b.vehicle, b.device, b.boot): b for b in fd.boots}
    agg = VersionAgg()
    bi = oi = 0
    first_flag: float | None = None
    false_flags: set[tuple[str, str, str]] = set()
    looks = 0
    rows: list[VersionRow] = []
    t = fd.t_min + DAY
    while t <= fd.t_max + DAY:
        while bi < len(boots) and boots[bi].t0 < t:
            agg.add_boot(boots[bi])
            bi += 1
        while oi < len(fd.occs) and fd.occs[oi].t < t:
            o = fd.occs[oi]
            ob = boot_of.get((o.vehicle, o.device, o.boot))
            if ob is not None:
                agg.add_occ(o, ob)
            oi += 1
        for (v, f, c), ta in first_alarm.items():
            if ta < t:
                agg.exclude((v, devices.get(v, ""), f, c))
        rows = agg.table(p)
        looks += 1
        for r in rows:
            if r.flagged:
                k = (r.component, r.version, r.family)
                if k == target:
                    first_flag = t if first_flag is None else first_flag
                else:
                    false_flags.add(k)
        t += DAY
    final = next((r for r in rows if (r.component, r.version, r.family) == target), None)
    return {"looks": looks, "cars_on_version": reg["cars"], "true_factor": reg["factor"],
            "detected": first_flag is not None,
            "days_from_rollout": round((first_flag - reg["rollout_t"]) / DAY, 1) if first_flag is not None else None,
            "final_ratio": round(final.ratio, 2) if final else None,
            "final_ratio_ci": [round(final.ratio_low, 2), round(final.ratio_high, 2)] if final else None,
            "false_flags": sorted("/".join(k) for k in false_flags)}


def score(fd: FleetData, result: dict[str, Any], truth: dict[str, Any], p: Params) -> dict[str, Any]:
    alarms = [(r["vehicle"], r["family"], r["component"], t) for r in result["at_risk"] for t in r["alarms"]]
    return {"risk": score_risk(fd, alarms, truth, result["monitored_keys"], p),
            "versions": score_versions(fd, truth, p, alarms)}


def evaluate(vehicles: int, days: float, seeds: list[int], p: Params, argv: list[str]) -> str:
    from tools.sim import fleet_model as M
    from tools.sim.fleet_direct import load as load_direct

    sweep = [replace(p, rho=r, arl0_hours=a) for r in (2.0, 3.0, 5.0) for a in (20_000.0, 50_000.0, 200_000.0)]
    rows: list[tuple[int, dict[str, Any], dict[str, Any]]] = []
    sweep_tot: dict[tuple[float, float], SweepTotal] = defaultdict(SweepTotal)
    started = time.monotonic()
    for seed in seeds:
        mix = M.Mix()
        with tempfile.TemporaryDirectory(prefix="icvq-eval-") as tmp:
            store = SqliteStore(Path(tmp) / "eval.db", synchronous="OFF")
            cars = M.fleet(vehicles, seed, days, mix)
            truth = M.truth(cars, mix, days)
            load_direct(store, M.fleet(vehicles, seed, days, mix))
            fd = load(store)
            store.close()
        rates = baselines(fd)
        keys = monitored_keys(rates)
        for q in sweep:
            alarms = [(r.vehicle, r.family, r.component, t) for r in rising_risk(fd, q, rates) for t in r.alarms]
            s = score_risk(fd, alarms, truth, keys, q)
            sweep_tot[(q.rho, q.arl0_hours)].add(s)
            if (q.rho, q.arl0_hours) == (p.rho, p.arl0_hours):
                main_risk, main_alarms = s, alarms
        if (p.rho, p.arl0_hours) not in sweep_tot:
            main_alarms = [(r.vehicle, r.family, r.component, t) for r in rising_risk(fd, p, rates) for t in r.alarms]
            main_risk = score_risk(fd, main_alarms, truth, keys, p)
        rows.append((seed, main_risk, score_versions(fd, truth, p, main_alarms)))
    return render(vehicles, days, seeds, p, rows, sweep_tot, keys, argv, time.monotonic() - started)


def render(vehicles: int, days: float, seeds: list[int], p: Params, rows: list[tuple[int, dict[str, Any],
           dict[str, Any]]], sweep: dict[tuple[float, float], SweepTotal], keys: int, argv: list[str],
           seconds: float) -> str:
    cmd = "python -m tools.ingest predict " + " ".join(argv)
    out = [f"Command: `{cmd}` ({seconds:.0f} s). {vehicles} vehicles x {days:g} days per seed, seeds "
           f"{','.join(map(str, seeds))}; CUSUM rho {p.rho:g}, ARL0 {p.arl0_hours:,.0f} operating hours per key, "
           f"{keys} monitored keys per vehicle.", "",
           "| seed | degraded | detected | late | lead days (median [p25, p75]) | lead op. hours (median) | "
           "false alarms | per 1000 vehicle-h (design) | by family |",
           "|---:|---:|---:|---:|---|---:|---:|---|---|"]
    for seed, r, _ in rows:
        out.append(f"| {seed} | {r['degraded']} | {r['detected']} ({r['detection_rate']:.0%}) | {r['late']} | "
                   f"{r['lead_days_median']:.1f} [{r['lead_days_p25']:.1f}, {r['lead_days_p75']:.1f}] | "
                   f"{r['lead_hours_median']:.1f} | {r['false_alarms']} | {r['false_per_1000h']:.3f} "
                   f"({r['false_per_1000h_design']:.3f}) | "
                   f"{', '.join(f'{k} {v}' for k, v in r['per_family'].items())} |")
    out += ["", "Version regression (hmi 3.3.0, freeze rate x factor; daily looks):", "",
            "| seed | cars on 3.3.0 | true factor | flagged | days after rollout start | final ratio [95% CI] | "
            "false flags (any look) |", "|---:|---:|---:|---|---:|---|---|"]
    for seed, _, v in rows:
        ci = v["final_ratio_ci"] or ["-", "-"]
        out.append(f"| {seed} | {v['cars_on_version']} | {v['true_factor']:g} | {'yes' if v['detected'] else 'no'} | "
                   f"{v['days_from_rollout'] if v['days_from_rollout'] is not None else '-'} | "
                   f"{v['final_ratio']} [{ci[0]}, {ci[1]}] | {', '.join(v['false_flags']) or 'none'} |")
    out += ["", "Sweep over the CUSUM design (all seeds pooled):", "",
            "| rho | ARL0 (h) | detected | by precursor rate at failure: " + " / ".join(PEAK_BINS) +
            " | false alarms | per 1000 vehicle-h | design | lead days (median of seed medians) |",
            "|---:|---:|---:|---|---:|---:|---:|---:|"]
    for (rho, a), t in sorted(sweep.items()):
        peaks = " / ".join(f"{d}/{n}" for d, n in t.per_peak.values())
        out.append(f"| {rho:g} | {a:,.0f} | {t.detected}/{t.degraded} ({t.detected / max(t.degraded, 1):.0%}) | "
                   f"{peaks} | {t.false} | {1000 * t.false / t.hours:.3f} | {1000 * keys / a:.3f} | "
                   f"{statistics.median(t.leads) if t.leads else float('nan'):.1f} |")
    return "\n".join(out) + "\n"
