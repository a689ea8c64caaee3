"""Where the idle agent's CPU goes, thread by thread (issue 13: idle CPU at most 1.5x collectd's).

    python -m tools.bench.idle_threads [--seconds S] [--base DIR]

Runs the agent at the documented default config (config/agent.toml, as tools/bench/peer.py does) against its own
mosquitto and reads each thread's CPU from /proc/PID/task/TID/schedstat (nanoseconds, where /proc's utime and
stime count 10 ms ticks) and its context switches, over S seconds after a 15 s settle. With `--base DIR` (a
checkout or worktree of another commit) that tree's agent runs beside it in the same minutes, so load on a shared
machine falls on both alike and the difference is the change's. Threads are listed in the order they were
created (the main thread first); the one waking once a second is the black box's 1 Hz sampler.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.bench.peer import icvq_conf
from tools.localbroker import Mosquitto

REPO = Path(__file__).resolve().parents[2]
Threads = dict[int, tuple[int, int]]  # tid -> (CPU ns, context switches)


def threads(pid: int) -> Threads:
    out: Threads = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        try:
            ns = int(Path(f"/proc/{pid}/task/{t}/schedstat").read_text().split()[0])
            status = Path(f"/proc/{pid}/task/{t}/status").read_text()
        except OSError:
            continue  # the thread ended
        switches = sum(int(line.split()[1]) for line in status.splitlines() if "ctxt_switches:" in line)
        out[int(t)] = (ns, switches)
    return out


def start(tree: Path, tmp: Path, port: int) -> subprocess.Popen[bytes]:
    tmp.mkdir(parents=True)
    conf = icvq_conf(tmp, port)
    log = (tmp / "agent.log").open("ab")
    return subprocess.Popen([sys.executable, "-m", "agent", "--config", str(conf)], cwd=tree,
                            env={**os.environ, "PYTHONPATH": str(tree)}, stdout=log, stderr=log)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--base", type=Path, help="another tree to run beside this one")
    args = ap.parse_args(argv)
    trees = [("this tree", REPO)] + ([("base", args.base.resolve())] if args.base else [])
    with tempfile.TemporaryDirectory(prefix="icvq-idle-") as d:
        tmp = Path(d)
        brokers, procs = [], []
        try:
            for i, (_, tree) in enumerate(trees):
                b = Mosquitto(tmp / f"b{i}", persistent=False).start()
                brokers.append(b)
                procs.append(start(tree, tmp / f"a{i}", b.port))
            time.sleep(15.0)
            for p in procs:
                if p.poll() is not None:
                    raise SystemExit(f"an agent exited with {p.returncode} (logs in {tmp})")
            before = [threads(p.pid) for p in procs]
            t0 = time.monotonic()
            time.sleep(args.seconds)
            after = [threads(p.pid) for p in procs]
            wall = time.monotonic() - t0
        finally:
            for p in procs:
                p.terminate()
                p.wait(20)
            for b in brokers:
                b.stop()
    print(f"`python -m tools.bench.idle_threads --seconds {args.seconds:g}"
          f"{' --base ' + str(args.base) if args.base else ''}` ({wall:.0f} s measured)\n")
    print("| tree | thread (creation order) | CPU s/h | wake-ups/s |")
    print("|---|---|---:|---:|")
    for (name, _), a, z in zip(trees, before, after, strict=True):
        total = 0.0
        for k, tid in enumerate(sorted(z)):
            if tid not in a:
                continue
            cpu = (z[tid][0] - a[tid][0]) / 1e9 / wall * 3600
            total += cpu
            print(f"| {name} | #{k} | {cpu:.3f} | {(z[tid][1] - a[tid][1]) / wall:.2f} |")
        print(f"| {name} | **all** | **{total:.3f}** | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
