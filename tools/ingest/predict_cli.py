"""`python -m tools.ingest predict`: load a store (or simulate fleets with `--evaluate`), run the prediction
signals (predict.py), print a summary or JSON, optionally scored against a simulator truth (predict_eval.py).

The command line lives apart from the analysis so that predict_eval.py may import the analysis without the
analysis importing it back (tools/ingest stays free of import cycles).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import predict
from .predict import analyse
from .predict_data import load
from .predict_eval import evaluate, score
from .predict_params import params_args, params_from
from .store import open_store


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.ingest predict", description=predict.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", help="SQLite path or postgresql:// URL")
    params_args(ap)
    ap.add_argument("--by-swin", action="store_true",
                    help="compare software by its SWIN (GB 44496 software identification number, from the birth "
                         "message) where the vehicle reports one, instead of by version string")
    ap.add_argument("--json", action="store_true", help="print the full analysis as JSON")
    ap.add_argument("--truth", help="score against a simulator truth file (tools.sim fleet --truth)")
    ap.add_argument("--evaluate", action="store_true",
                    help="simulate fleets with injected degradation and a regressing version, score, print markdown")
    ap.add_argument("--vehicles", type=int, default=1000, help="--evaluate: fleet size (default %(default)s)")
    ap.add_argument("--days", type=float, default=90, help="--evaluate: simulated days (default %(default)s)")
    ap.add_argument("--seeds", default="1,2,3", help="--evaluate: one fleet per seed (default %(default)s)")
    args = ap.parse_args(argv)
    p = params_from(args)
    if args.evaluate:
        print(evaluate(args.vehicles, args.days, [int(s) for s in args.seeds.split(",")], p, argv or sys.argv[1:]))
        return 0
    if not args.db:
        ap.error("--db is required (or --evaluate)")
    store = open_store(args.db)
    try:
        fd = load(store, by="swin" if args.by_swin else "version")
    finally:
        store.close()
    result = analyse(fd, p)
    if args.truth:
        with open(args.truth) as f:
            result["score"] = score(fd, result, json.load(f), p)
    if args.json:
        print(json.dumps(result, indent=1, default=str))
    else:
        print(summary(result))
    return 0


def summary(res: dict[str, Any]) -> str:
    lines = [f"{res['vehicles']} vehicles, {res['operating_hours']:,.0f} operating hours; CUSUM rho "
             f"{res['params']['rho']:g}, ARL0 {res['params']['arl0_hours']:,.0f} h per key "
             f"(expected false alarms {res['false_alarms_expected_per_1000_vehicle_hours']:.2f} per 1000 vehicle-"
             f"hours over {res['monitored_keys']} keys)", "", "Rising risk (alarm or S/h >= 0.5):"]
    for r in res["at_risk"][:50]:
        lines.append(f"  {r['vehicle']}/{r['device']} {r['family']}:{r['component']} S/h {r['score']:.2f} alarms "
                     f"{len(r['alarms'])} events {r['events']} (baseline {r['baseline_per_1000h']:.1f}/1000 h, "
                     f"recent x{r['recent_ratio']:.1f})")
    lines += ["", "Software versions flagged (rate vs the other versions of the component):"]
    for r in res["regressions"]:
        lines.append(f"  {r['component']} {r['version']} {r['family']}: {r['rate_per_1000h']:.1f}/1000 h "
                     f"[{r['ci_low']:.1f}, {r['ci_high']:.1f}] ratio {r['ratio']:.2f} [{r['ratio_low']:.2f}, "
                     f"{r['ratio_high']:.2f}] p {r['p']:.1e}")
    if "score" in res:
        lines += ["", "Score: " + json.dumps(res["score"])]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
