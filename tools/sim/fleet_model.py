"""The fleet's behaviour: cars, drives (one boot each), software versions and the episodes they produce.

Deterministic for a seed and a car index, lazy per car (a generator of drives), and free of any I/O, so the
same model feeds the live MQTT simulation, the direct-to-store evaluation and the tests. Rates are per
operating hour; every car differs a little (lognormal spread), because real cars do and a detector that only
works on identical cars is no detector.

Scenario mix (shares of the fleet):
- tunnel routes: link losses with cause "tunnel" (GNSS and cellular lost together) — not a precursor;
- blocked radar: spells of days with radar faults caused by blockage — environmental, not a precursor;
- freezes: every car has a small base rate of screen freezes, black screens, terminal link losses, sensor
  timeouts and CAN error bursts (the precursor families);
- degradation: a few cars have one component degrading towards a failure: its precursor rate climbs linearly
  from the base rate to a peak (0.2-2 per operating hour: a dying part glitches often) over a ramp of 10-25
  days; the component fails at the end of the ramp and is replaced (rate back to base);
- a regressing software version: an OTA of `hmi` 3.3.0 rolls out to part of the fleet and multiplies the
  freeze rate; a harmless modem OTA rolls out too (a version that must NOT be flagged).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from agent.records import Kind, Record

DAY = 86400.0
T0_DEFAULT = 1_767_225_600.0  # 2026-01-01T00:00Z: evaluation runs are reproducible to the byte

BASE_SOFTWARE = {"hmi": "3.2.1", "modem": "11.608.04", "adas": "5.1.0", "gateway": "2.0.4"}

# Precursor base rates per operating hour (fleet median car).
BASE_RATES = {"freeze": 0.02, "black_screen": 0.005, "link_terminal": 0.004, "sensor": 0.004,
              "can_errors": 0.008}
COVERAGE_RATE = 0.05  # link losses in coverage holes per hour (not a precursor)


@dataclass(frozen=True)
class Mix:
    tunnel: float = 0.25
    blocked_radar: float = 0.03
    degrading: float = 0.03
    regress_share: float = 0.3
    regress_day: float = 20.0
    regress_spread_days: float = 7.0
    regress_factor: float = 3.0
    harmless_ota_share: float = 0.5
    harmless_ota_day: float = 10.0
    spread: float = 0.25             # sigma of the per-car lognormal rate multiplier
    degrade_peak: tuple[float, float] = (0.2, 2.0)   # events per operating hour at failure
    degrade_ramp_days: tuple[float, float] = (10.0, 25.0)

    @staticmethod
    def parse(spec: str) -> Mix:
        """`tunnel=0.3,degrading=0.05,regress_factor=2` → a Mix (unknown keys are an error)."""
        kw: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            k, _, v = part.partition("=")
            if k not in Mix.__dataclass_fields__ or isinstance(getattr(Mix(), k), tuple):
                raise ValueError(f"unknown scenario key {k!r} (known: {', '.join(Mix.__dataclass_fields__)})")
            kw[k] = float(v)
        return Mix(**kw)


@dataclass(frozen=True)
class Degradation:
    vehicle: str
    family: str
    component: str
    onset_t: float
    fail_t: float
    peak_per_h: float


@dataclass
class Drive:
    vehicle: str
    device: str
    boot: str
    t_start: float      # wall seconds
    duration_s: float
    mono0: float        # boot-relative monotonic seconds at drive start
    software: dict[str, str]
    records: list[Record] = field(default_factory=list)


def poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 40:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


class Car:
    def __init__(self, idx: int, seed: int, days: float, mix: Mix, *, t0: float = T0_DEFAULT,
                 metric_interval_s: float = 0.0, fleet: str = "sim", prefix: str = "SIM",
                 continuous: bool = False) -> None:
        self.idx = idx
        self.vehicle = f"{prefix}{idx:05d}"
        self.device = "hu"
        self.fleet = fleet
        self.days = days
        self.mix = mix
        self.t0 = t0
        self.metric_interval_s = metric_interval_s
        self.continuous = continuous  # drives back to back from t0 (live runs of minutes, not days)
        self.rng = random.Random(seed * 1_000_003 + idx)
        r = self.rng
        self.spread = {k: math.exp(r.gauss(0, mix.spread)) for k in BASE_RATES}
        self.tunnel = r.random() < mix.tunnel
        self.blocked_radar = r.random() < mix.blocked_radar
        self.regress_at = (t0 + (mix.regress_day + r.random() * mix.regress_spread_days) * DAY
                           if r.random() < mix.regress_share else None)
        self.harmless_at = (t0 + (mix.harmless_ota_day + r.random() * 5) * DAY
                            if r.random() < mix.harmless_ota_share else None)
        self.degradation: Degradation | None = None
        if r.random() < mix.degrading and days > 20:
            fam = r.choice(sorted(BASE_RATES))
            comp = {"freeze": "display", "black_screen": "display", "link_terminal": "modem",
                    "sensor": "radar.front", "can_errors": "can:can0"}[fam]
            ramp = r.uniform(*mix.degrade_ramp_days) * DAY
            # Failures fall inside the observed window, after enough history for a baseline.
            fail = t0 + r.uniform(min(days * 0.4, 25.0), days - 1) * DAY
            lo, hi = mix.degrade_peak
            self.degradation = Degradation(self.vehicle, fam, comp, max(t0 + DAY, fail - ramp), fail,
                                           math.exp(r.uniform(math.log(lo), math.log(hi))))
        self.blocked_days: set[int] = set()
        if self.blocked_radar:
            d = 0
            while d < days:
                if r.random() < 0.3:
                    self.blocked_days.update(range(d, d + r.randint(1, 3)))
                d += 7

    # ------------------------------------------------------------------------------------------ state
    def software(self, t: float) -> dict[str, str]:
        sw = dict(BASE_SOFTWARE)
        if self.regress_at is not None and t >= self.regress_at:
            sw["hmi"] = "3.3.0"
        if self.harmless_at is not None and t >= self.harmless_at:
            sw["modem"] = "11.610.01"
        return sw

    def rate(self, family: str, t: float, sw: dict[str, str]) -> float:
        lam = BASE_RATES[family] * self.spread[family]
        if family == "freeze" and sw["hmi"] == "3.3.0":
            lam *= self.mix.regress_factor
        d = self.degradation
        if d is not None and d.family == family and d.onset_t <= t < d.fail_t:
            lam += (d.peak_per_h - lam) * (t - d.onset_t) / (d.fail_t - d.onset_t)
        return lam

    # ------------------------------------------------------------------------------------------ drives
    def drives(self) -> Iterator[Drive]:
        r = self.rng
        if self.continuous:
            t, end = self.t0 + r.uniform(0, 60), self.t0 + self.days * DAY
            while t < end:
                dur = min(end - t, max(120.0, r.lognormvariate(math.log(35 * 60), 0.6)))
                yield self._drive(t, dur, int((t - self.t0) // DAY))
                t += dur + r.uniform(30, 300)
            return
        for day in range(math.ceil(self.days)):
            n = min(4, poisson(r, 1.6))
            starts = sorted(r.uniform(6, 22) for _ in range(n))
            last_end = -1.0
            for h in starts:
                t = self.t0 + day * DAY + h * 3600
                if t <= last_end + 600:
                    continue
                dur = min(3 * 3600.0, max(300.0, r.lognormvariate(math.log(35 * 60), 0.6)))
                if t - self.t0 >= self.days * DAY:
                    return
                last_end = t + dur
                yield self._drive(t, dur, day)

    def _drive(self, t: float, dur: float, day: int) -> Drive:
        r = self.rng
        sw = self.software(t)
        drv = Drive(self.vehicle, self.device, f"{r.getrandbits(128):032x}", t, dur, r.uniform(8, 25), sw)
        hours = dur / 3600
        out: list[tuple[float, Kind, str, Any, int | None]] = []  # (offset s, kind, name, data, episode)

        def episode(name: str, at: float, length: float, fields: dict[str, Any]) -> None:
            ep = r.getrandbits(63)
            end = min(at + length, dur)
            out.append((at, Kind.BEGIN, name, dict(fields), ep))
            out.append((end, Kind.END, name, {**fields, "duration_s": round(end - at, 3),
                                              **({"ended_by": "shutdown"} if end < at + length else {})}, ep))

        for fam in BASE_RATES:
            for _ in range(poisson(r, self.rate(fam, t, sw) * hours)):
                self._precursor(episode, fam, r.uniform(0, dur))
        for _ in range(poisson(r, COVERAGE_RATE * hours)):
            episode("link.loss", r.uniform(0, dur), r.lognormvariate(math.log(40), 0.7),
                    {"cause": "coverage", "rsrp_before": round(r.uniform(-125, -110), 1)})
        if self.tunnel:
            for _ in range(poisson(r, 2.0)):
                episode("link.loss", r.uniform(0, dur), r.uniform(20, 150), {"cause": "tunnel", "gnss_lost": True})
        if day in self.blocked_days:
            for _ in range(poisson(r, 1.5 * hours)):
                episode("sensor.fault", r.uniform(0, dur), r.uniform(60, 900),
                        {"sensor": "radar.front", "cause": "blockage"})
        step = self.metric_interval_s or dur
        k = 0
        while k * step <= dur:
            at = min(k * step, dur)
            out.append((at, Kind.METRIC, "system.cpu_pct", round(r.uniform(5, 60), 1), None))
            k += 1
        if out[-1][0] < dur:
            out.append((dur, Kind.METRIC, "system.cpu_pct", round(r.uniform(5, 60), 1), None))
        out.sort(key=lambda x: (x[0], x[1] is Kind.END))
        drv.records = [Record(kind, name, int((t + at) * 1000), int((drv.mono0 + at) * 1000), drv.boot, True,
                              data, ep) for at, kind, name, data, ep in out]
        return drv

    def _precursor(self, episode: Any, fam: str, at: float) -> None:
        r = self.rng
        if fam == "freeze":
            episode("display.freeze", at, r.lognormvariate(math.log(3.0), 0.8),
                    {"evidence": ["heartbeat"], "app": "hmi"})
        elif fam == "black_screen":
            episode("display.black", at, r.lognormvariate(math.log(8.0), 0.7), {"evidence": ["backlight"]})
        elif fam == "link_terminal":
            # T3402: 12 minutes of back-off after repeated attach failures is the terminal's signature.
            episode("link.loss", at, r.lognormvariate(math.log(720), 0.3), {"cause": "terminal", "signal_ok": True})
        elif fam == "sensor":
            sensor = "radar.front" if self.degradation and self.degradation.family == "sensor" \
                else r.choice(("radar.front", "camera.front", "radar.rear"))
            episode(r.choice(("can.timeout", "sensor.fault")), at, r.lognormvariate(math.log(2.0), 0.8),
                    {"sensor": sensor, "cause": "timeout"})
        else:
            episode("can.error", at, r.lognormvariate(math.log(1.0), 0.6),
                    {"bus": "can0", "frames": r.randint(5, 200)})


def birth_fields(drive: Drive, agent_version: str = "0.1.0") -> dict[str, Any]:
    """What the agent's birth message carries (agent.daemon.Daemon.birth_fields), for a simulated unit."""
    return {"agent": agent_version, "config": "sim", "started": int(drive.t_start),
            "inventory": {"agent": agent_version, "os": "SimOS", "components": dict(drive.software)}}


def fleet(n: int, seed: int, days: float, mix: Mix, **kw: Any) -> list[Car]:
    return [Car(i, seed, days, mix, **kw) for i in range(n)]


def truth(cars: list[Car], mix: Mix, days: float, t0: float = T0_DEFAULT) -> dict[str, Any]:
    """What was injected, for scoring the predictions."""
    return {"t0": t0, "days": days, "vehicles": len(cars),
            "degraded": [vars(c.degradation) for c in cars if c.degradation is not None],
            "regression": {"component": "hmi", "version": "3.3.0", "family": "freeze",
                           "factor": mix.regress_factor, "rollout_t": t0 + mix.regress_day * DAY,
                           "cars": sum(1 for c in cars if c.regress_at is not None)},
            "harmless": {"component": "modem", "version": "11.610.01"}}
