"""Small exact statistics, pure Python (the backend has no numpy/scipy dependency).

- Exact (Garwood) Poisson confidence intervals for a rate, Wilson score intervals for a proportion, the exact
  conditional test that compares two Poisson rates (binomial given the total).
- A continuous-time Poisson CUSUM for "this vehicle's precursor rate went up by a factor rho". Time is
  measured in expected baseline events (u = integral of lambda0 over operating time), so one threshold
  table serves every family and every baseline: between events S falls by (rho-1)*du, at an event it rises by
  ln(rho); alarm when S >= h. That is the log-likelihood-ratio CUSUM of rate rho*lambda0 against lambda0.
- Its average run length (ARL) from the integral equation of the embedded chain at event times, solved
  numerically (Nystroem, midpoint rule), and checked against simulation in the tests.
  `python -m tools.ingest.predict_stats` prints the table.
"""

from __future__ import annotations

import bisect
import math
import random
from collections.abc import Callable
from functools import lru_cache

# ------------------------------------------------------------------------------------ distributions


def norm_ppf(p: float) -> float:
    """Inverse standard normal CDF (bisection on erf; plenty fast for a handful of calls)."""
    if not 0 < p < 1:
        raise ValueError("p must be in (0, 1)")
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2)) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _gammainc_lower_reg(a: float, x: float) -> float:
    """Regularised lower incomplete gamma P(a, x) (series / continued fraction, Numerical Recipes 6.2)."""
    if x <= 0:
        return 0.0
    lg = math.lgamma(a)
    if x < a + 1:
        term = total = 1.0 / a
        ap = a
        for _ in range(10_000):
            ap += 1
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return total * math.exp(-x + a * math.log(x) - lg)
    b = x + 1 - a
    c = 1 / 1e-300
    d = 1 / b
    h = d
    for i in range(1, 10_000):
        an = -i * (i - a)
        b += 2
        d = an * d + b
        d = 1e-300 if abs(d) < 1e-300 else d
        c = b + an / c
        c = 1e-300 if abs(c) < 1e-300 else c
        d = 1 / d
        delta = d * c
        h *= delta
        if abs(delta - 1) < 1e-15:
            break
    return 1.0 - math.exp(-x + a * math.log(x) - lg) * h


def poisson_cdf(k: int, lam: float) -> float:
    """P(X <= k) for X ~ Poisson(lam)."""
    if k < 0:
        return 0.0
    if lam <= 0:
        return 1.0
    return 1.0 - _gammainc_lower_reg(k + 1, lam)


def poisson_sf(k: int, lam: float) -> float:
    """P(X >= k)."""
    return 1.0 if k <= 0 else 1.0 - poisson_cdf(k - 1, lam)


def _solve_increasing(f: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    for _ in range(200):
        mid = (lo + hi) / 2
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def poisson_ci(k: int, exposure: float = 1.0, conf: float = 0.95) -> tuple[float, float]:
    """Exact (Garwood) interval for a rate: k events in `exposure` units."""
    alpha = 1 - conf
    hi_lam = max(10.0, k * 3 + 50)
    lo = 0.0 if k == 0 else _solve_increasing(lambda m: poisson_sf(k, m), alpha / 2, 0.0, hi_lam)
    hi = _solve_increasing(lambda m: 1 - poisson_cdf(k, m), 1 - alpha / 2, 0.0, hi_lam)
    return lo / exposure, hi / exposure


def wilson(x: int, n: int, conf: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion x/n."""
    if n == 0:
        return 0.0, 1.0
    z = norm_ppf(1 - (1 - conf) / 2)
    p = x / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def binom_sf(x: int, n: int, p: float) -> float:
    """P(X >= x) for X ~ Binomial(n, p), summed in log space (exact)."""
    if x <= 0:
        return 1.0
    if x > n:
        return 0.0
    if p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    lp, lq = math.log(p), math.log1p(-p)
    base = math.lgamma(n + 1)
    terms = [base - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * lp + (n - k) * lq for k in range(x, n + 1)]
    m = max(terms)
    return min(1.0, math.exp(m) * sum(math.exp(t - m) for t in terms))


def rate_ratio_test(x1: int, e1: float, x2: int, e2: float, conf: float = 0.95) -> tuple[float, float, float,
                                                                                              float]:
    """Rate 1 vs rate 2: (ratio, lower, upper, one-sided p for 'rate 1 is higher').

    Given n = x1 + x2 events, x1 ~ Binomial(n, e1*r1 / (e1*r1 + e2*r2)); under equal rates p0 = e1/(e1+e2).
    The exact binomial tail is the test; the Wilson interval on the proportion maps to the ratio interval.
    """
    n = x1 + x2
    if n == 0 or e1 <= 0 or e2 <= 0:
        return float("nan"), 0.0, float("inf"), 1.0
    p0 = e1 / (e1 + e2)
    pval = binom_sf(x1, n, p0)
    lo_p, hi_p = wilson(x1, n, conf)

    def to_ratio(p: float) -> float:
        return float("inf") if p >= 1 else p / (1 - p) * e2 / e1

    ratio = (x1 / e1) / (x2 / e2) if x2 else float("inf")
    return ratio, to_ratio(lo_p), to_ratio(hi_p), pval


# ------------------------------------------------------------------------------------------ CUSUM


class PoissonCusum:
    """Continuous-time Poisson CUSUM in expected-event units (see the module docstring)."""

    def __init__(self, rho: float, h: float) -> None:
        self.a = math.log(rho)
        self.c = rho - 1
        self.h = h
        self.s = 0.0

    def elapse(self, du: float) -> None:
        self.s = max(0.0, self.s - self.c * du)

    def event(self) -> bool:
        self.s += self.a
        if self.s >= self.h:
            self.s = 0.0  # alarm raised and handed over; start again
            return True
        return False


def arl(rho: float, h: float, rate: float = 1.0, m: int = 240) -> float:
    """Average run length in u (expected baseline events) of PoissonCusum(rho, h) when events come at `rate`
    per u (1 = in control, rho = the designed shift). Embedded chain at events: S' = a + max(0, S - c*G),
    G ~ Exp(rate); E[T] = E[events to alarm] / rate (Wald). Solves (I - K) L = 1 on a midpoint grid."""
    a, c = math.log(rho), rho - 1
    if a >= h:
        return 1.0 / rate
    width = h - a
    delta = width / m
    xs = [a] + [a + (j + 0.5) * delta for j in range(m)]  # unknowns: L(a) and L at midpoints of [a, h)
    lam = rate / c
    n = len(xs)
    # Row i: L(s_i) - sum_j K_ij L(x_j) = 1, K from the atom at y=0 (-> state a) and the density on (0, s).
    A = [[0.0] * n for _ in range(n)]
    # The kernel is integrated exactly over each cell (L taken constant on a cell): every row then carries the
    # right probability mass, which matters because (I - K) is nearly singular when the ARL is large.
    for i, s in enumerate(xs):
        row = A[i]
        row[i] += 1.0
        row[0] -= math.exp(-lam * s)
        upper = min(a + s, h)
        for j in range(1, n):
            lo = xs[j] - delta / 2
            if lo >= upper:
                break
            hi = min(lo + delta, upper)
            row[j] -= math.exp(-lam * (s + a - hi)) - math.exp(-lam * (s + a - lo))
    L = _solve(A, [1.0] * n)
    return (1.0 + L[0]) / rate


def _solve(A: list[list[float]], b: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting (n of a few hundred)."""
    n = len(b)
    M = [[*row, b[i]] for i, row in enumerate(A)]
    for k in range(n):
        p = max(range(k, n), key=lambda r: abs(M[r][k]))
        M[k], M[p] = M[p], M[k]
        pivot = M[k][k]
        rk = M[k]
        for r in range(k + 1, n):
            f = M[r][k] / pivot
            if f:
                rr = M[r]
                for j in range(k, n + 1):
                    rr[j] -= f * rk[j]
    x = [0.0] * n
    for i in range(n - 1, -1, -1):
        x[i] = (M[i][n] - sum(M[i][j] * x[j] for j in range(i + 1, n))) / M[i][i]
    return x


def simulate_arl(rho: float, h: float, rate: float = 1.0, runs: int = 2000, seed: int = 1) -> tuple[float, float]:
    """(mean, standard error) of the run length in u by simulation — the check on arl()."""
    rng = random.Random(seed)
    xs = []
    for _ in range(runs):
        cs = PoissonCusum(rho, h)
        u = 0.0
        while True:
            g = rng.expovariate(rate)
            u += g
            cs.elapse(g)
            if cs.event():
                break
        xs.append(u)
    mean = sum(xs) / runs
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (runs - 1))
    return mean, sd / math.sqrt(runs)


H_GRID = tuple(x / 2 for x in range(2, 31))  # 1.0 .. 15.0


@lru_cache(maxsize=8)
def arl_table(rho: float) -> tuple[tuple[float, float], ...]:
    """(h, ARL0 in u) on H_GRID; computed once per rho per process (about a second for m=120)."""
    return tuple((h, arl(rho, h, m=120)) for h in H_GRID)


def threshold(rho: float, arl0_u: float) -> float:
    """Smallest h whose in-control ARL reaches arl0_u (log-linear interpolation on the table)."""
    tab = arl_table(rho)
    arls = [x for _, x in tab]
    if arl0_u <= arls[0]:
        return tab[0][0]
    i = bisect.bisect_left(arls, arl0_u)
    if i >= len(tab):
        return tab[-1][0]
    (h0, l0), (h1, l1) = tab[i - 1], tab[i]
    return h0 + (h1 - h0) * (math.log(arl0_u) - math.log(l0)) / (math.log(l1) - math.log(l0))


def main() -> None:
    print("| rho | h | ARL0 (u, integral eq.) | ARL0 (simulated) | ARL1 at rho (u) |")
    print("|---:|---:|---:|---:|---:|")
    for rho in (2.0, 3.0, 5.0):
        for h in (2.0, 3.0, 4.0, 5.0, 6.0):
            sim, se = simulate_arl(rho, h, runs=1000)
            print(f"| {rho:g} | {h:g} | {arl(rho, h):.1f} | {sim:.1f} ± {se:.1f} | {arl(rho, h, rate=rho):.2f} |")


if __name__ == "__main__":
    main()
