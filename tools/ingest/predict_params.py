"""The tuning of the prediction signals (`Params`) and its command-line options, shared by `predict`, its
evaluation and `report`.

A module of its own so that predict.py, predict_versions.py and predict_eval.py all depend on it and never on
each other in a circle (tests/backend/test_ingest_imports.py keeps tools/ingest free of import cycles).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

DAY = 86400.0


@dataclass(frozen=True)
class Params:
    rho: float = 3.0
    arl0_hours: float = 50_000.0
    alpha: float = 0.01
    min_ratio: float = 1.25
    recent_days: float = 14.0
    cluster_k: int = 2
    all_families: bool = False


def params_args(ap: argparse.ArgumentParser) -> None:
    d = Params()
    ap.add_argument("--rho", type=float, default=d.rho,
                    help="rate increase the CUSUM is tuned to (default %(default)s)")
    ap.add_argument("--arl0-hours", type=float, default=d.arl0_hours,
                    help="in-control average run length per vehicle and key, operating hours (default %(default)s)")
    ap.add_argument("--alpha", type=float, default=d.alpha, help="family-wise error for version flags (default "
                    "%(default)s, Bonferroni)")
    ap.add_argument("--min-ratio", type=float, default=d.min_ratio, help="smallest rate ratio worth flagging")
    ap.add_argument("--recent-days", type=float, default=d.recent_days)
    ap.add_argument("--cluster-k", type=int, default=d.cluster_k,
                    help="a version flag must survive dropping this many top vehicles (default %(default)s)")
    ap.add_argument("--all-families", action="store_true",
                    help="test every software component against every family, not only its own")


def params_from(args: argparse.Namespace) -> Params:
    return Params(args.rho, args.arl0_hours, args.alpha, args.min_ratio, args.recent_days, args.cluster_k,
                  args.all_families)
