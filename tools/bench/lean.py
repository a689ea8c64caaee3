"""Issue 13 benchmarks: event latency under the metric linger, idle wake-ups and CPU per thread, RSS against the
floor of what the agent really imports, and reconnect after a broker outage.

- event → PUBACK: the whole daemon in-process (default config: system probe, 300 s linger), a real mosquitto;
  events are handed to the pipeline at random moments and timed to the PUBACK of the batch that carries them;
- idle: the daemon as a process; context switches (voluntary + involuntary, which also counts fsync and GIL
  hand-offs, so it bounds the timer wake-ups from above) and CPU per thread from /proc/PID/task;
- RSS: the daemon's VmRSS and PSS after settling, against a process that imports exactly the non-agent modules
  the daemon still holds after settling (its `sys.modules`, read in a run of its own) and nothing else; what
  it imported at start and released again (argparse, the TOML reader, ...) is listed, not counted in the floor;
- reconnect: the daemon in-process, a persistent mosquitto killed and restarted (outages of 5-15 s, an event
  waiting); the delay from "broker accepts TCP again" to the first PUBACK, over N trials.

`python -m tools.bench.lean [--quick] [--only rss]` (`--only rss` runs the RSS step alone, ~80 s, and prints its
figures and the gap per mapping: what to run before and after a memory change)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.config import load
from agent.daemon import Daemon
from tools.bench import _procstat as procstat
from tools.bench.peer import icvq_conf
from tools.localbroker import Mosquitto

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def _pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]


class Acks:
    """Times of the PUBACKs the pipeline applied (the uplink's note_ack is called once per step with acks)."""

    def __init__(self, daemon: Daemon) -> None:
        self.times: list[float] = []
        self.lock = threading.Lock()
        up = daemon.uplink
        orig = up.note_ack

        def note() -> None:
            with self.lock:
                self.times.append(time.monotonic())
            orig()

        up.note_ack = note  # type: ignore[method-assign]

    def first_after(self, t: float, timeout_s: float) -> float | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                later = [x for x in self.times if x > t]
            if later:
                return min(later)
            time.sleep(0.005)
        return None


class Subscriber:
    """A persistent-session subscriber, so the broker keeps the subscription over its restarts (no 0x10)."""

    def __init__(self, port: int) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="lean-bench-sub", protocol=MQTTProtocolVersion.MQTTv5)
        self.c.reconnect_delay_set(1, 1)
        ok = threading.Event()

        def on_connect(c: Any, u: Any, f: Any, rc: Any, p: Any) -> None:
            c.subscribe("icvq/#", qos=1)
            ok.set()

        self.c.on_connect = on_connect
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.c.connect("127.0.0.1", port, keepalive=5, clean_start=False, properties=props)
        self.c.loop_start()
        if not ok.wait(10):
            raise TimeoutError("subscriber did not connect")
        time.sleep(1.5)  # the broker's autosave (1 s) records the session

    def stop(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def _wait_connected(d: Daemon, settle_s: float) -> None:
    """Until the uplink is connected (at most 20 s), then `settle_s` more so start-up traffic is out of the way."""
    deadline = time.monotonic() + 20
    while not d.uplink.connected and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(settle_s)


def _daemon(tmp: Path, port: int) -> Daemon:
    conf = icvq_conf(tmp, port)
    d = Daemon(load(conf, lean=True), str(conf))
    d.start()
    return d


def bench_event_latency(tmp: Path, n: int) -> dict[str, Any]:
    broker = Mosquitto(tmp / "b-ev", persistent=False).start()
    sub = Subscriber(broker.port)
    d = _daemon(tmp / "ev", broker.port)
    try:
        acks = Acks(d)
        _wait_connected(d, settle_s=2.0)
        published0 = d.pipeline.counters.snapshot().get("published", 0)
        lat: list[float] = []
        rnd = random.Random(13)
        for i in range(n):
            time.sleep(rnd.uniform(0.3, 1.5))
            t = time.monotonic()
            d.pipeline.intake(d.rec.event("bench.event", {"i": i}))
            a = acks.first_after(t, 10.0)
            lat.append((a - t) if a is not None else float("inf"))
        published = d.pipeline.counters.snapshot().get("published", 0) - published0
        waiting = d.spool.n_records
    finally:
        d.stop()
        sub.stop()
        broker.stop()
    return {"n": n, "p50_ms": _pct(lat, 50) * 1000, "p99_ms": _pct(lat, 99) * 1000, "max_ms": max(lat) * 1000,
            "batches": published, "metrics_waiting_at_end": waiting}


def _threads_of(pid: int, names: dict[str, str]) -> dict[str, tuple[int, float]]:
    tck = os.sysconf("SC_CLK_TCK")
    out: dict[str, tuple[int, float]] = {}
    for t in Path(f"/proc/{pid}/task").iterdir():
        try:
            st = (t / "status").read_text()
            f = (t / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        sw = sum(int(line.split()[1]) for line in st.splitlines() if "ctxt_switches" in line)
        name = re.sub(r"paho-mqtt-client-.*", "paho-mqtt-client", names.get(t.name, t.name))
        prev = out.get(name, (0, 0.0))
        out[name] = (prev[0] + sw, prev[1] + (int(f[11]) + int(f[12])) / tck)
    return out


# Runs the real entry point (agent.daemon.main) after noting the threads' names for the benchmark.
_RUNNER = """
import json, sys, threading, time
def names():
    time.sleep(8)
    open(sys.argv[2], "w").write(json.dumps({str(t.native_id): t.name for t in threading.enumerate()}))
threading.Thread(target=names, daemon=True).start()
from agent.daemon import main
sys.exit(main(["--config", sys.argv[1]]))
"""


def bench_idle(tmp: Path, window_s: float, blackbox: bool) -> dict[str, Any]:
    broker = Mosquitto(tmp / f"b-idle{blackbox}", persistent=False).start()
    conf = icvq_conf(tmp / f"idle{blackbox}", broker.port)
    if not blackbox:
        text = conf.read_text()
        conf.write_text(re.sub(r"(\[blackbox\][^\[]*?\n)enabled = true", r"\1enabled = false", text, count=1))
    names_file = tmp / f"threads{blackbox}.json"
    p = subprocess.Popen([sys.executable, "-c", _RUNNER, str(conf), str(names_file)], cwd=REPO, env=ENV,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(12)
        names = json.loads(names_file.read_text())
        a, ta = _threads_of(p.pid, names), time.monotonic()
        time.sleep(window_s)
        b, tb = _threads_of(p.pid, names), time.monotonic()
    finally:
        p.terminate()
        p.wait(20)
        broker.stop()
    w = tb - ta
    per = {k: ((b[k][0] - a.get(k, (0, 0.0))[0]) / w, (b[k][1] - a.get(k, (0, 0.0))[1]) / w * 3600) for k in b}
    return {"window_s": w, "threads": per, "switches_per_s": sum(v[0] for v in per.values()),
            "cpu_s_per_h": sum(v[1] for v in per.values())}


_FLOOR = """
import importlib, sys, time
for m in sys.argv[1].split(","):
    try:
        importlib.import_module(m)
    except Exception:
        pass
time.sleep(600)
"""


_HELD = """
import importlib.util, json, runpy, sys, threading, time
out, settle_s = sys.argv[2], float(sys.argv[3])
imported = set()
sys.addaudithook(lambda event, args: imported.add(args[0]) if event == "import" else None)
def found(name):  # an optional import that failed (paho tries socks, dns) was never held
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
def dump():
    time.sleep(settle_s)
    held = list(sys.modules)  # in import order: the floor imports them in the same order
    released = sorted(m for m in imported - set(held) if found(m))
    with open(out, "w") as f:
        json.dump({"held": held, "released": released}, f)
threading.Thread(target=dump, daemon=True).start()
sys.argv = ["icvq-agent", "--config", sys.argv[1]]
runpy.run_module("agent", run_name="__main__", alter_sys=True)
"""


def held_modules(conf: Path, settle_s: float) -> tuple[list[str], list[str]]:
    """The non-agent modules a real daemon run still holds after `settle_s` (lazy ones it loaded included), and
    those it imported and released again at start (argparse, the TOML reader, ...). The floor imports only the
    first list: a floor that also held what the daemon released would flatter the daemon."""
    out = conf.parent / "held-modules.json"
    p = subprocess.Popen([sys.executable, "-c", _HELD, str(conf), str(out), str(settle_s)],
                         cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + settle_s + 30
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.2)
    p.terminate()
    p.wait(20)
    data = json.loads(out.read_text())

    def foreign(names: list[str]) -> list[str]:
        return [m for m in names if not m.startswith(("agent", "__main__")) and m not in sys.builtin_module_names]

    return foreign(data["held"]), foreign(data["released"])


def floor_cmd(mods: list[str]) -> list[str]:
    """A process that imports exactly `mods` and sleeps: the memory floor of the agent's dependencies."""
    return [sys.executable, "-c", _FLOOR, ",".join(mods)]


def bench_rss(tmp: Path, settle_s: float) -> dict[str, Any]:
    # As installed: pip and Buildroot byte-compile the package, and the floor's modules are compiled already. A
    # daemon compiling its own sources at start (a checkout run with PYTHONDONTWRITEBYTECODE) pays ~0.07 MiB of
    # the compiler's leftovers that a car does not.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "agent")], check=True,
                   stdout=subprocess.DEVNULL)
    broker = Mosquitto(tmp / "b-rss", persistent=False).start()
    conf = icvq_conf(tmp / "rss", broker.port)
    res: dict[str, Any] = {}
    try:
        mods, released = held_modules(conf, settle_s)
        res["floor_modules"] = len(mods)
        res["released_modules"] = sorted({m.split(".")[0] for m in released})
        res["third_party"] = sorted({m.split(".")[0] for m in mods if m.split(".")[0] in
                                     ("paho", "psutil", "msgpack", "can", "cantools", "tomli")})
        # 2) the daemon alone, then the floor alone
        for key, cmd in (("agent", [sys.executable, "-m", "agent", "--config", str(conf)]),
                         ("floor", floor_cmd(mods)),
                         ("old_floor", [sys.executable, "-c",
                                        "import can, paho.mqtt.client, psutil, msgpack, time; time.sleep(600)"])):
            p = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                time.sleep(settle_s)
                s = procstat.sample(p.pid)
                res[f"{key}_rss_mib"], res[f"{key}_pss_mib"] = s.rss_mib, s.pss_mib
                res[f"{key}_maps"] = procstat.rss_by_mapping(p.pid)
            finally:
                p.terminate()
                p.wait(20)
    finally:
        broker.stop()
    a, f = res.pop("agent_maps"), res.pop("floor_maps")
    res.pop("old_floor_maps")
    # Where the agent's RSS exceeds the floor, per mapping (KiB): what to work on next.
    res["gap_kib"] = sorted(((k, a.get(k, 0) - f.get(k, 0)) for k in set(a) | set(f) if a.get(k, 0) != f.get(k, 0)),
                            key=lambda kv: -abs(kv[1]))[:8]
    res["rss_ratio"] = res["agent_rss_mib"] / res["floor_rss_mib"]
    res["pss_ratio"] = res["agent_pss_mib"] / res["floor_pss_mib"]
    return res


def bench_reconnect(tmp: Path, trials: int) -> dict[str, Any]:
    broker = Mosquitto(tmp / "b-rc", persistent=True).start()
    sub = Subscriber(broker.port)
    d = _daemon(tmp / "rc", broker.port)
    delays: list[float] = []
    rnd = random.Random(31)
    try:
        acks = Acks(d)
        _wait_connected(d, settle_s=3.0)
        for i in range(trials):
            broker.kill()
            time.sleep(rnd.uniform(2.0, 4.0))
            d.pipeline.intake(d.rec.event("bench.during_outage", {"trial": i}))
            time.sleep(rnd.uniform(3.0, 11.0))
            broker.start()            # returns once the port accepts TCP
            t_back = time.monotonic()
            a = acks.first_after(t_back, 120.0)
            delays.append((a - t_back) if a is not None else float("inf"))
            time.sleep(rnd.uniform(1.0, 3.0))
        reasons = d.uplink.reconnects
    finally:
        d.stop()
        sub.stop()
        broker.stop()
    return {"trials": trials, "p50_s": _pct(delays, 50), "p95_s": _pct(delays, 95), "max_s": max(delays),
            "mean_s": statistics.mean(delays), "connections": reasons}


def rss_text(rss: dict[str, Any]) -> str:
    """The RSS step's figures on their own (`--only rss`)."""
    return (f"VmRSS agent / floor: {rss['agent_rss_mib']:.2f} / {rss['floor_rss_mib']:.2f} MiB = {rss['rss_ratio']:.3f}\n"
            f"PSS agent / floor: {rss['agent_pss_mib']:.2f} / {rss['floor_pss_mib']:.2f} MiB = {rss['pss_ratio']:.3f}\n"
            f"floor modules: {rss['floor_modules']} (released at start, not in the floor: "
            f"{', '.join(rss['released_modules']) or 'none'}); old floor VmRSS {rss['old_floor_rss_mib']:.2f} MiB\n"
            f"gap per mapping (KiB): {', '.join(f'{k} {v:+d}' for k, v in rss['gap_kib'])}")


def markdown(ev: dict[str, Any], idle: dict[str, Any], idle_nobb: dict[str, Any], rss: dict[str, Any],
             rc: dict[str, Any], cmd: str) -> str:
    threads = "\n".join(f"| {name} | {v[0]:.2f} | {v[1]:.2f} | {idle_nobb['threads'].get(name, (0.0, 0.0))[0]:.2f} |"
                        for name, v in sorted(idle["threads"].items(), key=lambda kv: -kv[1][0]))
    return f"""## Issue 13: event latency, idle wake-ups, memory floor, reconnect

Command: `{cmd}` (this machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; default config:
system probe every 10 s, `batch_linger_s` 300 s, keepalive 60 s, a real mosquitto on loopback).

| measure | result | goal |
|---|---|---|
| event → PUBACK, p50 / p99 / max ({ev['n']} events, samples lingering) | {ev['p50_ms']:.0f} / {ev['p99_ms']:.0f} / {ev['max_ms']:.0f} ms | p99 ≤ 1,000 ms |
| batches for those events / samples still waiting at the end | {ev['batches']} / {ev['metrics_waiting_at_end']} | one batch per event; samples wait |
| idle context switches per second, whole process (upper bound of wake-ups) | {idle['switches_per_s']:.2f} | ≤ 3 |
| the same with `[blackbox] enabled = false` | {idle_nobb['switches_per_s']:.2f} | |
| idle CPU seconds per hour (with / without the black box) | {idle['cpu_s_per_h']:.2f} / {idle_nobb['cpu_s_per_h']:.2f} | see the collectd table |
| VmRSS: agent / floor of what it imports | {rss['agent_rss_mib']:.1f} / {rss['floor_rss_mib']:.1f} MiB = {rss['rss_ratio']:.2f} | ≤ 1.1× |
| PSS: agent / floor | {rss['agent_pss_mib']:.1f} / {rss['floor_pss_mib']:.1f} MiB = {rss['pss_ratio']:.2f} | |
| old "import floor" (`import can, paho, psutil, msgpack`): VmRSS | {rss['old_floor_rss_mib']:.1f} MiB | (counted python-can, which the agent never imports) |
| broker back → first PUBACK, p50 / p95 / max over {rc['trials']} outages of 5–15 s | {rc['p50_s']:.2f} / {rc['p95_s']:.2f} / {rc['max_s']:.2f} s | p95 ≤ 5 s |

The floor is a Python process importing exactly the {rss['floor_modules']} non-agent modules the idle daemon holds
(its `sys.modules` after settling; third-party among them: {', '.join(rss['third_party'])}). Imported at start and
released before the daemon's modules, so not in the floor: {', '.join(rss['released_modules']) or 'none'}.
Where the agent's VmRSS exceeds the floor's, per mapping (KiB; [anon] is pymalloc's arenas, thread stacks and
large mallocs; [heap] is glibc's main heap): {', '.join(f"{k} {v:+d}" for k, v in rss['gap_kib'])}.

Idle, per thread ({idle['window_s']:.0f} s window; context switches per second, CPU seconds per hour):

| thread | switches/s | CPU s/h | switches/s without the black box |
|---|---|---|---|
{threads}
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.lean", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer events and trials, shorter windows (smoke run)")
    ap.add_argument("--only", choices=["rss"], help="run one step alone and print its figures")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.only == "rss":
            print(rss_text(bench_rss(tmp, 10 if args.quick else 20)))
            return 0
        ev = bench_event_latency(tmp, 30 if args.quick else 200)
        idle = bench_idle(tmp, 30 if args.quick else 120, blackbox=True)
        idle_nobb = bench_idle(tmp, 30 if args.quick else 120, blackbox=False)
        rss = bench_rss(tmp, 10 if args.quick else 20)
        rc = bench_reconnect(tmp, 4 if args.quick else 20)
    cmd = "python -m tools.bench.lean" + (" --quick" if args.quick else "")
    print(markdown(ev, idle, idle_nobb, rss, rc, cmd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
