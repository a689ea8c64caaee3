"""python -m tools.sim fleet --vehicles N: a simulated fleet publishing realistic traffic.

Live (default): each car runs the agent's own Spool, Pipeline and Uplink in-process and publishes to the
broker over its own MQTT connection; cars are spread over a few processes (tools/sim/fleet_agent.py says why).
Time is compressed by --speed. With --ids-out every batch identity the cars sealed is written as JSON lines
(what the backend must hold exactly once).

Direct (--direct DB): the same model and the agent's encoder, decoded and stored by the ingest code without a
broker: weeks of fleet history in seconds, for reports and the prediction evaluation.

Scenarios (--scenario key=value,...): tunnel, blocked_radar, degrading (shares of the fleet), regress_share,
regress_day, regress_factor (the hmi 3.3.0 freeze regression), harmless_ota_share, harmless_ota_day, spread.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

from . import fleet_model as M


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tools.sim fleet", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vehicles", type=int, default=100, help="number of cars (default %(default)s)")
    ap.add_argument("--days", type=float, help="simulated days (default 30 with --direct, else 0.02)")
    ap.add_argument("--hours", type=float, help="simulated hours (instead of --days)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scenario", default="", help="scenario mix, e.g. degrading=0.05,regress_factor=2")
    ap.add_argument("--continuous", action="store_true",
                    help="drive back to back from the start (short live runs) instead of daily drives")
    ap.add_argument("--metric-interval", type=float, default=None, metavar="S",
                    help="simulated seconds between metric samples (default 60 live, 0 = drive start/end)")
    ap.add_argument("--truth", help="write what was injected (degradations, regression) to this JSON file")
    ap.add_argument("--t0", type=float, help="simulated start, epoch seconds (default: 2026-01-01 for --direct,"
                    " else now minus the simulated span)")
    live = ap.add_argument_group("live (MQTT)")
    live.add_argument("--host", default="127.0.0.1")
    live.add_argument("--port", type=int, default=1883)
    live.add_argument("--topic-prefix", default="icvq/v1")
    live.add_argument("--allow-plaintext", action="store_true",
                      help="the cars speak plain MQTT: needed for a --host that is not loopback (docs/security.md)")
    live.add_argument("--speed", type=float, default=60.0, help="simulated seconds per real second")
    live.add_argument("--procs", type=int, help="processes hosting the cars (default and minimum: one per 250 cars)")
    live.add_argument("--step-interval", type=float, default=1.0, metavar="S",
                      help="real seconds between pipeline steps of one car (default %(default)s)")
    live.add_argument("--grace", type=float, default=3.0, metavar="S",
                      help="real seconds a car gets to flush at ignition off (default %(default)s)")
    live.add_argument("--drain-timeout", type=float, default=120.0, metavar="S",
                      help="at the end, wait this long for every spool to be acknowledged")
    live.add_argument("--ids-out", help="write the sealed batch identities as JSON lines")
    ap.add_argument("--direct", metavar="DB", help="no broker: store into this SQLite path or postgresql:// URL")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    mix = M.Mix.parse(args.scenario)
    days = args.hours / 24 if args.hours is not None else args.days
    if days is None:
        days = 30.0 if args.direct else 0.02
    if args.direct:
        return _direct(args, mix, days)
    return _live(args, mix, days)


def _direct(args: argparse.Namespace, mix: M.Mix, days: float) -> int:
    from tools.ingest.store import open_store

    from .fleet_direct import load

    t0 = args.t0 if args.t0 is not None else M.T0_DEFAULT
    cars = M.fleet(args.vehicles, args.seed, days, mix, t0=t0, metric_interval_s=args.metric_interval or 0.0,
                   continuous=args.continuous)
    if args.truth:
        Path(args.truth).write_text(json.dumps(M.truth(cars, mix, days, t0), indent=1))
    store = open_store(args.direct)
    try:
        # The model is lazy per car; a fresh fleet (same seed) yields the same cars for loading.
        out = load(store, M.fleet(args.vehicles, args.seed, days, mix, t0=t0,
                                  metric_interval_s=args.metric_interval or 0.0, continuous=args.continuous))
        print(json.dumps({**out, **store.counts()}))
    finally:
        store.close()
    return 0


def _live(args: argparse.Namespace, mix: M.Mix, days: float) -> int:
    from agent.tls import is_loopback

    from .fleet_agent import CARS_PER_PROCESS, ShardOptions, shard_main

    if not (is_loopback(args.host) or args.allow_plaintext):
        print(f"fleet: the simulated cars speak plain MQTT and {args.host} is not loopback: the agent's uplink "
              "would refuse it; pass --allow-plaintext", file=sys.stderr)
        return 2

    t0 = args.t0 if args.t0 is not None else time.time() - days * M.DAY
    metric = 60.0 if args.metric_interval is None else args.metric_interval
    if args.truth:
        cars = M.fleet(args.vehicles, args.seed, days, mix, t0=t0, continuous=args.continuous)
        Path(args.truth).write_text(json.dumps(M.truth(cars, mix, days, t0), indent=1))
    # Never more than CARS_PER_PROCESS per process (paho's select() loop; see fleet_agent.py).
    procs = max(args.procs or 1, math.ceil(args.vehicles / CARS_PER_PROCESS))
    ctx = mp.get_context("spawn")  # no fork of a process with threads
    with tempfile.TemporaryDirectory(prefix="icvq-fleet-") as tmp:
        opts = [ShardOptions(i, tuple(range(i, args.vehicles, procs)), args.seed, days, mix, args.host, args.port,
                             args.topic_prefix, args.speed, t0, metric, args.continuous, args.step_interval,
                             args.grace, args.drain_timeout, str(Path(tmp) / f"shard{i}.json"),
                             args.allow_plaintext)
                for i in range(procs)]
        workers = [ctx.Process(target=shard_main, args=(o,), daemon=True) for o in opts]
        started = time.monotonic()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        results = [json.loads(Path(o.out).read_text()) for o in opts if Path(o.out).exists()]
    published = [k for r in results for k in r["published"]]
    left = {v: n for r in results for v, n in r["left_in_spools"].items()}
    if args.ids_out:
        with open(args.ids_out, "w") as f:
            for k in published:
                f.write(json.dumps(k) + "\n")
    summary = {"vehicles": args.vehicles, "processes": procs, "shards_ok": len(results),
               "sessions": sum(r["sessions"] for r in results), "batches": len(published),
               "dropped": sum(len(r["dropped"]) for r in results), "cars_with_unsent_data": len(left),
               "seconds": round(time.monotonic() - started, 1)}
    print(json.dumps(summary))
    return 0 if len(results) == procs and not left else 1


if __name__ == "__main__":
    sys.exit(main())
