"""`python -m tools.bench.verdict [--quick]`: what the one health verdict costs, and how fast `icvq status`
tells a hung agent apart.

- `health.verdict()` over a worst case (every reason present) and over a healthy snapshot, per call;
- `Daemon.verdict()` (gather + verdict) on a real daemon object, per call: the main thread pays it for
  STATUS= every 2 s, the control thread for every `status` request;
- `icvq status` wall time (a fresh Python process, as at the roadside) against a running agent and against
  the same agent SIGSTOPped (HUNG is read from SO_PEERCRED and the owner's process state, no read timeout).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from agent.config import from_mapping
from agent.daemon import Daemon
from agent.health import Facts, ProbeFact, SpoolFact, verdict
from tools.tomlw import to_toml

REPO = Path(__file__).resolve().parents[2]


def per_call_us(fn: Callable[[], object], n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def cli_s(config: Path, n: int) -> tuple[float, int]:
    times, rc = [], 0
    for _ in range(n):
        t = time.monotonic()
        rc = subprocess.run([sys.executable, "-m", "agent.cli", "status", "-c", str(config)], capture_output=True,
                            cwd=str(REPO)).returncode
        times.append(time.monotonic() - t)
    return statistics.median(times), rc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.verdict")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = ap.parse_args(argv)
    n = 2000 if args.quick else 20000
    now = time.time()
    worst = Facts(now=now, pipeline_age_s=40, connected=False, offline_since=now - 60, uplink_error="refused",
                  spool_trouble=SpoolFact("disk_full", now - 5, "full"), spool_bytes=90, spool_max_bytes=100,
                  drops={"spool_full.metric": 3}, clock_synced=False, clock_unsynced_since=now - 900,
                  history_error="disk I/O error",
                  probes=tuple(ProbeFact(f"p{i}", "error", "x", now) for i in range(4)))
    healthy = Facts(now=now, probes=tuple(ProbeFact(f"p{i}", "ok") for i in range(4)))
    pure_worst = per_call_us(lambda: verdict(worst), n)
    pure_ok = per_call_us(lambda: verdict(healthy), n)

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg = {"vehicle": {"id": "BENCH", "device": "hu", "fleet": "bench"},
               "uplink": {"host": "127.0.0.1", "port": 9, "backoff_min_s": 5.0},
               "spool": {"path": str(tmp / "spool.db")}, "history": {"path": str(tmp / "history.db")},
               "control": {"socket": str(tmp / "control.sock"), "group": ""},
               "agent": {"nice": 0, "io_idle": False}}
        daemon = Daemon(from_mapping(cfg))
        gathered = per_call_us(daemon.verdict, n // 4)

        conf = tmp / "agent.toml"
        conf.write_text(to_toml(cfg))
        log = (tmp / "agent.log").open("wb")
        agent = subprocess.Popen([sys.executable, "-m", "agent", "-c", str(conf)], stdout=log, stderr=log,
                                 cwd=str(REPO))
        try:
            deadline = time.monotonic() + 20
            while not (tmp / "control.sock").exists():
                if time.monotonic() > deadline:
                    raise RuntimeError((tmp / "agent.log").read_text())
                time.sleep(0.1)
            reps = 3 if args.quick else 7
            running_s, running_rc = cli_s(conf, reps)
            os.kill(agent.pid, signal.SIGSTOP)
            hung_s, hung_rc = cli_s(conf, reps)
            os.kill(agent.pid, signal.SIGCONT)
        finally:
            agent.terminate()
            agent.wait(20)

    print("## Health verdict (issue 15)\n")
    print("| what | cost |\n| --- | --- |")
    print(f"| `health.verdict()`, healthy snapshot, 4 probes | {pure_ok:.1f} µs per call |")
    print(f"| `health.verdict()`, every reason present | {pure_worst:.1f} µs per call |")
    print(f"| `Daemon.verdict()` (gather + verdict; STATUS= every 2 s, each `status` request) | "
          f"{gathered:.1f} µs per call |")
    print(f"| `icvq status` against a running agent (exit {running_rc}) | {running_s:.2f} s median, a fresh "
          "Python process |")
    print(f"| `icvq status` against the same agent SIGSTOPped (exit {hung_rc}: HUNG) | {hung_s:.2f} s median: "
          "no 10 s read timeout |")
    print(f"\n{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; `python -m tools.bench.verdict`\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
