"""Failure-prediction signals: the statistics against known values, and detection on a simulated fleet."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tools.ingest.predict import analyse
from tools.ingest.predict_data import load
from tools.ingest.predict_eval import score
from tools.ingest.predict_params import Params
from tools.ingest.predict_stats import (
    arl,
    binom_sf,
    poisson_ci,
    rate_ratio_test,
    simulate_arl,
    threshold,
    wilson,
)
from tools.ingest.store import SqliteStore
from tools.sim import fleet_model as M
from tools.sim.fleet_direct import load as load_direct


def test_exact_intervals_match_published_values() -> None:
    # Garwood intervals (e.g. Ulm 1990 tables) and a textbook Wilson interval.
    assert poisson_ci(0) == pytest.approx((0.0, 3.6889), abs=1e-3)
    assert poisson_ci(5) == pytest.approx((1.6235, 11.6683), abs=1e-3)
    assert poisson_ci(10, exposure=2.0) == pytest.approx((4.7954 / 2, 18.3904 / 2), abs=1e-3)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-3)
    assert binom_sf(8, 10, 0.5) == pytest.approx(56 / 1024)
    ratio, lo, hi, p = rate_ratio_test(30, 100.0, 20, 200.0)
    assert ratio == pytest.approx(3.0) and lo < 3.0 < hi and p < 1e-3


@pytest.mark.parametrize("rho,h", [(3.0, 3.0), (3.0, 5.0), (5.0, 4.0)])
def test_cusum_arl_from_the_integral_equation_matches_simulation(rho: float, h: float) -> None:
    sim, se = simulate_arl(rho, h, runs=1500, seed=7)
    assert abs(arl(rho, h, m=120) - sim) < 4 * se + 0.02 * sim
    assert arl(rho, h, rate=rho) < arl(rho, h) / 10  # the designed shift is caught far sooner


def test_threshold_inverts_the_arl() -> None:
    for target in (50.0, 500.0, 5000.0):
        h = threshold(3.0, target)
        assert arl(3.0, h, m=120) == pytest.approx(target, rel=0.05)


def test_detects_injected_degradation_and_the_regressing_version(tmp_path: Path) -> None:
    mix = M.Mix(degrading=0.1)
    store = SqliteStore(tmp_path / "fleet.db", synchronous="OFF")
    cars = M.fleet(250, 11, 50, mix)
    truth = M.truth(cars, mix, 50)
    load_direct(store, M.fleet(250, 11, 50, mix))
    fd = load(store)
    store.close()
    p = Params()
    res = analyse(fd, p)
    s = score(fd, res, truth, p)
    risk, ver = s["risk"], s["versions"]
    assert risk["degraded"] >= 15
    assert risk["detection_rate"] >= 0.5, risk
    assert risk["lead_days_median"] > 1.0
    # False alarms near the design rate (the simulated cars differ from each other, the design assumes not).
    assert risk["false_alarms"] <= 3 * max(1.0, risk["false_per_1000h_design"] * risk["operating_hours"] / 1000)
    assert ver["detected"] and ver["days_from_rollout"] < 20
    assert not ver["false_flags"]
    flagged = {(r["component"], r["version"], r["family"]) for r in res["regressions"]}
    assert flagged == {("hmi", "3.3.0", "freeze")}
    assert math.isfinite(res["recovery"]["freeze"]["p50"])
