"""Software-version regression: episode rates by version, with intervals, and the versions that are worse.

Each version of a software component is compared with all other versions of that component, on the families
that component is responsible for (families.py: hmi -> freezes and black screens, modem -> terminal link
losses, ...; `all_families` tests every pair). Test: exact conditional binomial on the two Poisson rates;
intervals: exact Poisson for each rate, Wilson for the ratio; flag when p < alpha / tests (Bonferroni) and
ratio >= min_ratio.

Events cluster in cars (one failing part makes hundreds), which the Poisson test does not expect. Two guards:
a unit with a rising-risk alarm on a family leaves that family's counts, and a flag must survive dropping the
`cluster_k` vehicles with the most events on that version (an excess carried by one or two cars is theirs,
not the version's).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from .families import BY_KEY, FAMILIES
from .predict_data import Boot, Occurrence
from .predict_params import Params
from .predict_stats import poisson_ci, rate_ratio_test

Key = tuple[str, str, str, str]  # (vehicle, device, family, component)


@dataclass
class VersionRow:
    component: str
    version: str
    family: str
    vehicles: int
    hours: float
    events: int
    rate_per_1000h: float
    ci_low: float
    ci_high: float
    ratio: float
    ratio_low: float
    ratio_high: float
    p: float
    p_without_top: float = 1.0
    flagged: bool = False


class VersionAgg:
    """Running exposure and counts by (component, version[, family]) and by vehicle; incremental, so the
    evaluation can look at the table after every simulated day without recomputing from scratch."""

    def __init__(self) -> None:
        self.hours: dict[tuple[str, str], float] = defaultdict(float)
        self.veh_hours: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: defaultdict(float))
        self.counts: dict[tuple[str, str, str], int] = defaultdict(int)
        self.veh_counts: dict[tuple[str, str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._contrib: dict[Key, list[tuple[str, str, str]]] = defaultdict(list)
        self.excluded: set[Key] = set()

    def add_boot(self, b: Boot) -> None:
        for comp, ver in b.sw.items():
            self.hours[(comp, ver)] += b.hours
            self.veh_hours[(comp, ver)][b.vehicle] += b.hours

    def add_occ(self, o: Occurrence, b: Boot) -> None:
        key = (o.vehicle, o.device, o.family, o.component)
        if key in self.excluded:
            return
        for comp, ver in b.sw.items():
            k = (comp, ver, o.family)
            self.counts[k] += 1
            self.veh_counts[k][o.vehicle] += 1
            self._contrib[key].append(k)

    def exclude(self, key: Key) -> None:
        if key in self.excluded:
            return
        self.excluded.add(key)
        for k in self._contrib.pop(key, []):
            self.counts[k] -= 1
            self.veh_counts[k][key[0]] -= 1

    def table(self, p: Params) -> list[VersionRow]:
        by_comp: dict[str, list[str]] = defaultdict(list)
        for comp, ver in self.hours:
            by_comp[comp].append(ver)
        rows: list[VersionRow] = []
        for comp, vers in sorted(by_comp.items()):
            if len(vers) < 2:
                continue
            total_h = sum(self.hours[(comp, v)] for v in vers)
            for fam in FAMILIES:
                if not p.all_families and BY_KEY[fam.key].software != comp:
                    continue
                total_n = sum(self.counts.get((comp, v, fam.key), 0) for v in vers)
                for ver in sorted(vers):
                    e1, x1 = self.hours[(comp, ver)], self.counts.get((comp, ver, fam.key), 0)
                    ratio, lo, hi, pval = rate_ratio_test(x1, e1, total_n - x1, total_h - e1)
                    clo, chi = poisson_ci(x1, e1)
                    rows.append(VersionRow(comp, ver, fam.key, len(self.veh_hours[(comp, ver)]), e1, x1,
                                           1000 * x1 / e1 if e1 else 0.0, 1000 * clo, 1000 * chi, ratio, lo, hi,
                                           pval))
        m = max(1, len(rows))
        for r in rows:
            if r.p < p.alpha / m and r.ratio >= p.min_ratio:
                r.p_without_top = self._p_without_top(r, p.cluster_k, total=self._totals(r.component, r.family))
                r.flagged = r.p_without_top < p.alpha / m
        return rows

    def _totals(self, comp: str, fam: str) -> tuple[int, float]:
        vers = [v for c, v in self.hours if c == comp]
        return (sum(self.counts.get((comp, v, fam), 0) for v in vers), sum(self.hours[(comp, v)] for v in vers))

    def _p_without_top(self, r: VersionRow, k: int, total: tuple[int, float]) -> float:
        per = self.veh_counts.get((r.component, r.version, r.family), {})
        top = sorted(per, key=lambda v: -per[v])[:k]
        x_top = sum(per[v] for v in top)
        h_top = sum(self.veh_hours[(r.component, r.version)].get(v, 0.0) for v in top)
        x1, e1 = r.events - x_top, r.hours - h_top
        _, _, _, pval = rate_ratio_test(x1, e1, total[0] - r.events, total[1] - r.hours)
        return pval


def version_rows(boots: list[Boot], occs: list[Occurrence], p: Params, exclude: set[Key]) -> list[VersionRow]:
    agg = VersionAgg()
    agg.excluded = set(exclude)
    boot_of = {(b.vehicle, b.device, b.boot): b for b in boots}
    for b in boots:
        agg.add_boot(b)
    for o in occs:
        ob = boot_of.get((o.vehicle, o.device, o.boot))
        if ob is not None:
            agg.add_occ(o, ob)
    return agg.table(p)
