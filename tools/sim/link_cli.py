"""`python -m tools.sim link SCENARIO`: play a connectivity scenario for an agent you run yourself.

Prints the `[probes.link]` table (JSON) to point the agent at the simulated GNSS and modem, then plays the
scenario (GNSS via gpsfake/gpsd, modem on a pty or as canned mmcli, the data path as a TCP gate) and exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

from .link_runner import LinkSim, SimError
from .scenarios import SCENARIOS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.sim link", description=__doc__.splitlines()[0])
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--speed", type=float, help="time compression (default: the scenario's own)")
    ap.add_argument("--modem", choices=("at", "mmcli"), default="at")
    ap.add_argument("--gpsd-port", type=int, help="port for gpsfake's gpsd (default: a free one)")
    ap.add_argument("--workdir", type=Path, help="where the route and canned files go (default: a temp dir)")
    ap.add_argument("--delay", type=float, default=3.0, help="seconds before the route starts playing")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    sc = SCENARIOS[args.scenario]()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"icvq-sim-{sc.name}-"))
    sim = LinkSim(sc, workdir, speed=args.speed, modem=args.modem, gpsd_port=args.gpsd_port, tcp_gate=True)
    try:
        sim.prepare()
    except SimError as e:
        print(f"sim: {e}", file=sys.stderr)
        return 1
    try:
        print(json.dumps({"probes.link": sim.probe_config()}, indent=2), flush=True)
        print(f"sim: {sc.title}: {sc.duration_s:.0f} scenario s at {sim.speed:g}x "
              f"(~{sc.duration_s / sim.speed + args.delay:.0f} s); expect cause {sc.expect.cause}", file=sys.stderr)
        sim.start(delay_s=args.delay)
        if not sim.wait(args.delay + 10 + 2 * sc.duration_s / sim.speed):
            print("sim: gpsfake did not finish in time", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        return 130
    finally:
        sim.stop()
    return 0
