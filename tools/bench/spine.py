"""Spine benchmarks: wire size vs JSON lines, spool→MQTT throughput and backlog drain, RSS vs the import floor,
start→READY time, idle CPU. `python -m tools.bench.spine [--quick]` prints a markdown section."""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from agent import wire
from agent.config import UplinkConfig, VehicleConfig
from agent.records import Kind, Record
from agent.spool import Spool
from agent.uplink import Acked, Up, Uplink
from tools.localbroker import Mosquitto

REPO = Path(__file__).resolve().parents[2]
BOOT = "5e" * 16


def sample_records(n: int) -> list[Record]:
    """A realistic mix: the system probe's metrics every 10 s, plus an event or episode now and then."""
    names = ["system.cpu_pct", "system.load1", "system.load5", "system.mem_used_pct", "system.mem_available_mib",
             "system.procs", "system.disk_used_pct", "system.disk_free_mib", "agent.cpu_pct", "agent.rss_mib"]
    out: list[Record] = []
    rnd = random.Random(1)
    level = {name: rnd.uniform(5, 80) for name in names}
    t, m, i = 1_767_225_600_000, 3_600_000, 0
    while len(out) < n:
        for name in names:
            # Random walks rounded as the probe rounds them: real gauges are neither constant nor noise.
            level[name] = max(0.0, level[name] + rnd.gauss(0, 2))
            v: Any = round(level[name], 2) if name != "system.procs" else 140 + rnd.randint(0, 9)
            out.append(Record(Kind.METRIC, name, t, m, BOOT, True, v))
            t, m = t + 3, m + 3
        if i % 20 == 0:
            out.append(Record(Kind.BEGIN, "link.loss", t, m, BOOT, True, {"cause": "tunnel", "rsrp_dbm": -118}, i))
        if i % 20 == 7:
            out.append(Record(Kind.END, "link.loss", t, m, BOOT, True,
                              {"cause": "tunnel", "duration_s": 61.2, "to_registered_s": 2.1}, i - 7))
        t, m, i = t + 10_000, m + 10_000, i + 1
    return out[:n]


def json_line(r: Record, vehicle: str = "VIN00000000000001", device: str = "hu") -> bytes:
    d: dict[str, Any] = {"t": r.wall_ms / 1000, "vehicle": vehicle, "device": device, "type": r.kind.label,
                         "name": r.name}
    d["value" if not isinstance(r.data, dict) else "fields"] = r.data
    if r.episode is not None:
        d["episode"] = r.episode
    return json.dumps(d, separators=(",", ":")).encode() + b"\n"


def bench_wire(n: int = 20_000) -> dict[str, Any]:
    recs = sample_records(n)
    js = sum(len(json_line(r)) for r in recs)
    res: dict[str, Any] = {"records": n, "json_bytes_per_record": js / n}
    for mode in ("never", "auto"):
        total = 0
        chunk = 1200  # ≈ what fits a 96 KiB batch uncompressed
        for i in range(0, n, chunk):
            total += len(wire.encode_batch(wire.BatchId("VIN00000000000001", "hu", 1, BOOT, i), recs[i:i + chunk],
                                           compress=mode))
        res[f"wire_{mode}_bytes_per_record"] = total / n
        res[f"ratio_{mode}"] = total / js
    t0 = time.process_time()
    for r in recs:
        json_line(r)
    res["json_encode_rps"] = n / (time.process_time() - t0)
    return res


def _uplink(port: int, events: queue.Queue[Any]) -> Uplink:
    return Uplink(UplinkConfig(host="127.0.0.1", port=port, max_inflight=16), VehicleConfig("BENCH1", "hu", "bench"),
                  boot_id=BOOT, birth_fields=dict, wall_ms=lambda: int(time.time() * 1000), events=events)


def _pump(sp: Spool, up: Uplink, events: queue.Queue[Any], window: int, until_empty: bool) -> None:
    inflight: dict[tuple[int, int], int] = {}
    mk = lambda boot, seq: wire.BatchId("BENCH1", "hu", sp.sid, boot, seq)  # noqa: E731
    while True:
        acked = []
        try:
            while True:
                ev = events.get(timeout=0.001 if inflight else 0.05)
                if isinstance(ev, Acked):
                    seq = inflight.pop((ev.gen, ev.mid), None)
                    if seq is not None:
                        acked.append(seq)
                elif isinstance(ev, Up):
                    pass
        except queue.Empty:
            pass
        sp.ack(acked)
        while len(inflight) < window:
            b = sp.seal(mk, 96 * 1024)
            if b is None:
                break
            res = up.publish(b.payload)
            assert res is not None
            inflight[res] = b.seq
        if until_empty and not inflight and sp.n_records == 0 and sp.n_batches == 0:
            return


def bench_throughput(port: int, n: int, tmp: Path) -> dict[str, Any]:
    recs = sample_records(n)
    res: dict[str, Any] = {"records": n}
    # Live path: group commits of 500 records, sealing and publishing as we go.
    events: queue.Queue[Any] = queue.Queue()
    up = _uplink(port, events)
    up.start()
    while not up.connected:
        time.sleep(0.01)
    sp = Spool(tmp / "live.db", 1 << 30)
    sp.open()
    t0, c0 = time.monotonic(), time.process_time()
    for i in range(0, n, 500):
        sp.put(recs[i:i + 500])
    _pump(sp, up, events, 16, until_empty=True)
    res["live_rps"] = n / (time.monotonic() - t0)
    res["live_cpu_us_per_record"] = (time.process_time() - c0) / n * 1e6
    sp.close()
    # Backlog: the spool filled while offline (a day in a car park), drained once the broker is back.
    sp = Spool(tmp / "backlog.db", 1 << 30)
    sp.open()
    for i in range(0, n, 2000):
        sp.put(recs[i:i + 2000])
    t0 = time.monotonic()
    _pump(sp, up, events, 16, until_empty=True)
    res["drain_rps"] = n / (time.monotonic() - t0)
    sp.close()
    up.stop()
    return res


def _rss_after(cmd: list[str], settle_s: float, env: dict[str, str] | None = None) -> float:
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(settle_s)
        return psutil.Process(p.pid).memory_info().rss / 2**20
    finally:
        p.terminate()
        p.wait(20)


def _agent_conf(tmp: Path, port: int, notify: bool = False) -> Path:
    conf = tmp / "agent.toml"
    conf.write_text(f"""[vehicle]\nid = "BENCH1"\ndevice = "hu"\nfleet = "bench"\n[uplink]\nhost = "127.0.0.1"
port = {port}\n[spool]\npath = "{tmp}/spool.db"\n[history]\npath = "{tmp}/history.db"\n[control]
socket = "{tmp}/control.sock"\ngroup = ""\n[agent]\nnice = 0\nio_idle = false\n""")
    return conf


def bench_process(port: int, tmp: Path, settle_s: float) -> dict[str, Any]:
    res: dict[str, Any] = {}
    conf = _agent_conf(tmp, port)
    # The floor is what this agent really imports (issue 13: the old `import can, paho, psutil, msgpack`
    # counted python-can, which the agent never loads).
    from tools.bench.lean import floor_cmd, held_modules

    res["floor_rss_mib"] = _rss_after(floor_cmd(held_modules(conf, 8.0)[0]), 5.0)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res["agent_rss_mib"] = _rss_after([sys.executable, "-m", "agent", "--config", str(conf)], settle_s, env)
    res["rss_ratio"] = res["agent_rss_mib"] / res["floor_rss_mib"]
    # start → READY=1 over a real NOTIFY_SOCKET, as systemd would see it.
    sock_path = str(tmp / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(sock_path)
    s.settimeout(30)
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "agent", "--config", str(conf)], cwd=REPO,
                         env={**env, "NOTIFY_SOCKET": sock_path}, stderr=subprocess.DEVNULL)
    while b"READY=1" not in s.recv(4096):
        pass
    res["ready_s"] = time.monotonic() - t0
    # Idle CPU at the default 10 s system interval: CPU seconds over a wall window, after start-up.
    time.sleep(2)
    proc = psutil.Process(p.pid)
    c0, w0 = sum(proc.cpu_times()[:2]), time.monotonic()
    time.sleep(settle_s)
    res["idle_cpu_pct"] = (sum(proc.cpu_times()[:2]) - c0) / (time.monotonic() - w0) * 100
    p.terminate()
    p.wait(20)
    s.close()
    return res


def markdown(w: dict[str, Any], t: dict[str, Any], p: dict[str, Any], cmd: str) -> str:
    return f"""## Spine: wire size, throughput, memory, start-up, idle CPU

Command: `{cmd}` (this machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; same run for each ratio).

| measure | result | baseline (same run) | ratio | goal |
|---|---|---|---|---|
| wire bytes/record, no zlib (bulk: 1,200-record batches) | {w['wire_never_bytes_per_record']:.1f} | JSON lines {w['json_bytes_per_record']:.1f} | {w['ratio_never']:.3f} | ≤ 1/6 (0.167) |
| wire bytes/record, zlib auto (bulk: 1,200-record batches) | {w['wire_auto_bytes_per_record']:.1f} | JSON lines {w['json_bytes_per_record']:.1f} | {w['ratio_auto']:.3f} | ≤ 1/6 |
| spool put+seal+publish+PUBACK, records/s | {t['live_rps']:,.0f} | JSON encoding only {w['json_encode_rps']:,.0f} | {t['live_rps'] / w['json_encode_rps']:.2f} | ≥ 5,000/s |
| backlog drain to broker, records/s | {t['drain_rps']:,.0f} | JSON encoding only {w['json_encode_rps']:,.0f} | {t['drain_rps'] / w['json_encode_rps']:.2f} | ≥ 5,000/s |
| CPU per record on the live path | {t['live_cpu_us_per_record']:.1f} µs | | | |
| steady RSS of the agent (system probe) | {p['agent_rss_mib']:.1f} MiB | import floor {p['floor_rss_mib']:.1f} MiB | {p['rss_ratio']:.2f} | ≤ 1.1× (issue 13) |
| start → READY=1 | {p['ready_s']:.2f} s | | | |
| idle CPU (default 10 s interval) | {p['idle_cpu_pct']:.2f} % of a core | | | |

Records: a realistic mix (ten system metrics per 10 s tick as random walks, plus link.loss episodes); {w['records']:,}
for the size figures, {t['records']:,} for throughput and drain (groups of 500 live, 2,000 for the backlog).
The wire rows are bulk figures: 1,200 records per batch, what a backlog drain sends after an outage. Live
traffic at the default config is in "Issue 13: icvq beside collectd" (batches of one 5-minute linger, and
single-event batches). The import floor is a process importing exactly the non-agent modules the daemon
holds when idle (its `sys.modules`, tools/bench/lean.py).
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.spine")
    ap.add_argument("--quick", action="store_true", help="smaller runs (a smoke check, not for the docs)")
    args = ap.parse_args(argv)
    n = 20_000 if args.quick else 100_000
    settle = 5.0 if args.quick else 20.0
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        broker = Mosquitto(tmp / "broker", persistent=False).start()
        try:
            w = bench_wire()
            t = bench_throughput(broker.port, n, tmp)
            p = bench_process(broker.port, tmp, settle)
        finally:
            broker.stop()
    cmd = "python -m tools.bench.spine" + (" --quick" if args.quick else "")
    print(markdown(w, t, p, cmd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
