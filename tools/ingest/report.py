"""python -m tools.ingest report --db DB -o report.html: a self-contained fleet quality report.

One HTML file with inline CSS and inline SVG charts (generated here; no JavaScript, nothing fetched), so it
opens anywhere and can be mailed: precursor rates over time, rates by software version with confidence
intervals (flagged regressions in red), recovery-time distributions, vehicles at rising risk, and what the
ingest refused (dead letters by reason).
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from html import escape
from pathlib import Path
from typing import Any

from . import report_context, svg
from .families import BY_KEY, FAMILIES
from .predict import analyse, quantile, rates_over_time, recovery
from .predict_data import FleetData, load
from .predict_params import Params, params_args, params_from
from .store import Store, open_store

CSS = """
body { font-family: sans-serif; margin: 24px auto; max-width: 1000px; color: #222; }
h1 { font-size: 22px; } h2 { font-size: 17px; margin-top: 28px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 12px; margin: 8px 0; }
td, th { border: 1px solid #ddd; padding: 3px 7px; text-align: right; } th { background: #f4f4f4; }
td.l, th.l { text-align: left; } .flag { color: #d62728; font-weight: bold; } .small { color: #666; font-size: 12px; }
.grid { display: flex; flex-wrap: wrap; gap: 8px; } svg.chart { display: block; margin: 6px 0; }
"""


def _date(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(t))


def _table(head: list[str], rows: list[list[Any]], left: int = 1) -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{escape(h)}</th>' for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _rates_section(fd: FleetData) -> str:
    series = {}
    for fam, pts in rates_over_time(fd).items():
        series[BY_KEY[fam].title] = [(t, 1000 * n / h) for t, n, h in pts if h > 0]
    return ("<h2>Precursor rates over time</h2><p class=small>Episodes per 1,000 operating hours, fleet-wide, "
            "per week (a drive counts in the week it started).</p>" +
            svg.line_chart(series, "Precursor rates over time", xfmt=_date, ylabel="per 1000 h"))


def _versions_section(res: dict[str, Any]) -> str:
    out = ["<h2>Rates by software version</h2><p class=small>Each version against the other versions of its "
           "component, on the families that component is responsible for. Dots: rate per 1,000 operating hours; "
           "bars: exact 95% Poisson interval. Red: flagged (exact test, Bonferroni over all "
           f"{len(res['versions'])} tests, ratio at least {res['params']['min_ratio']:g}, robust to the "
           f"{res['params']['cluster_k']} busiest cars).</p>"]
    rows = [(f"{r['component']} {r['version']} · {BY_KEY[r['family']].title}", r["rate_per_1000h"], r["ci_low"],
             r["ci_high"], r["flagged"]) for r in res["versions"]]
    out.append(svg.dot_ci_chart(rows, "Rates by software version", xlabel="episodes per 1000 operating hours"))
    table = [[escape(r["component"]), escape(r["version"]), escape(BY_KEY[r["family"]].title), r["vehicles"],
              f"{r['hours']:,.0f}", r["events"], f"{r['rate_per_1000h']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]",
              f"{r['ratio']:.2f} [{r['ratio_low']:.2f}, {r['ratio_high']:.2f}]" if math.isfinite(r["ratio"]) else "-",
              f"{r['p']:.1e}", '<span class="flag">regression</span>' if r["flagged"] else ""]
             for r in res["versions"]]
    out.append(_table(["component", "version", "family", "vehicles", "hours", "events", "rate/1000 h [95% CI]",
                       "vs others [95% CI]", "p", ""], table, left=3))
    return "\n".join(out)


def _recovery_section(fd: FleetData) -> str:
    out = ["<h2>Recovery-time distributions</h2><p class=small>Episode durations (seconds, log scale); dashed: "
           "median and 90th percentile.</p><div class=grid>"]
    rec = recovery(fd)
    for fam in FAMILIES:
        xs = [x for x in rec.get(fam.key, []) if x > 0]
        if not xs:
            continue
        lo, hi = math.floor(math.log10(min(xs)) * 4) / 4, math.ceil(math.log10(max(xs)) * 4) / 4 + 0.25
        edges = [10 ** (lo + 0.25 * i) for i in range(round((hi - lo) / 0.25) + 1)]
        bins = [(a, b, sum(1 for x in xs if a <= x < b)) for a, b in itertools.pairwise(edges)]
        out.append(svg.histogram(bins, f"{fam.title}: recovery time", xlabel=f"{fam.title} (n={len(xs)}), s",
                                 marks=[("p50", quantile(xs, 0.5)), ("p90", quantile(xs, 0.9))]))
    out.append("</div>")
    return "\n".join(out)


def risk_bar(r: dict[str, Any]) -> tuple[str, float, bool]:
    """One bar of the rising-risk chart: (label, S/h now, alarmed ever). The length is the statistic now, never
    padded to the threshold for a past alarm: a vehicle whose CUSUM fell back to 0 must not look in alarm."""
    label = f"{r['vehicle']}/{r['device']} {BY_KEY[r['family']].title}: {r['component']}"
    if r["alarms"] and r["score"] < 1.0:
        label += " (cleared)"
    return label, r["score"], bool(r["alarms"])


def _risk_section(res: dict[str, Any]) -> str:
    at = res["at_risk"][:25]
    rows = [risk_bar(r) for r in at]
    out = ["<h2>Vehicles at rising risk</h2><p class=small>Poisson CUSUM per vehicle and component against the "
           f"fleet baseline on the same software version, tuned to a {res['params']['rho']:g}x rise; in-control "
           f"average run length {res['params']['arl0_hours']:,.0f} operating hours per key, i.e. about "
           f"{res['false_alarms_expected_per_1000_vehicle_hours']:.2f} false alarms per 1,000 vehicle operating "
           "hours. <b>S/h</b> (bar and column): the vehicle's CUSUM statistic S now, divided by its alarm "
           "threshold h; 1 or more = in alarm now. Red: alarmed at least once (the bar still shows where S is "
           "now: an alarm that cleared, S back near 0, is a short red bar marked \"cleared\").</p>",
           svg.bar_chart(rows, "Vehicles at rising risk", rule=1.0, xlabel="S / h")]
    table = [[escape(r["vehicle"]), escape(BY_KEY[r["family"]].title), escape(r["component"]), r["events"],
              f"{r['hours']:,.0f}", f"{r['baseline_per_1000h']:.2f}", f"{r['score']:.2f}", len(r["alarms"]),
              _date(r["alarms"][0]) if r["alarms"] else "", f"x{r['recent_ratio']:.1f}"] for r in at]
    out.append(_table(["vehicle", "family", "component", "events", "hours", "baseline/1000 h", "S/h", "alarms",
                       "first alarm", f"last {res['params']['recent_days']:g} d vs baseline"], table, left=3))
    return "\n".join(out)


def _ingest_section(store: Store) -> str:
    counts = store.counts()
    dead = store.query("SELECT reason, COUNT(*) FROM dead_letter GROUP BY reason ORDER BY 2 DESC")
    rows = [[escape(str(r)), n] for r, n in dead] or [["none", 0]]
    return ("<h2>Ingest</h2>" + _table(["table", "rows"], [[k, f"{v:,}"] for k, v in counts.items()]) +
            "<p class=small>Dead letters (payloads refused, by reason):</p>" + _table(["reason", "count"], rows))


def render(store: Store, p: Params, title: str = "Fleet quality report") -> str:
    fd = load(store)
    res = analyse(fd, p)
    head = (f"<h1>{escape(title)}</h1><p class=small>{res['vehicles']} vehicles, {res['operating_hours']:,.0f} "
            f"operating hours, {_date(fd.t_min) if fd.boots else '-'} to {_date(fd.t_max) if fd.boots else '-'}; "
            f"generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.</p>")
    body = "\n".join([head, _rates_section(fd), _versions_section(res), _recovery_section(fd), _risk_section(res),
                      report_context.section(store), _ingest_section(store)])
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.ingest report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True, help="SQLite path or postgresql:// URL")
    ap.add_argument("-o", "--output", default="report.html", help="HTML file to write (default %(default)s)")
    ap.add_argument("--title", default="Fleet quality report")
    params_args(ap)
    args = ap.parse_args(argv)
    store = open_store(args.db)
    try:
        html = render(store, params_from(args), args.title)
    finally:
        store.close()
    Path(args.output).write_text(html)
    print(f"wrote {args.output} ({len(html) / 1024:.0f} KiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
