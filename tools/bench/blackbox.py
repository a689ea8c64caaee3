"""Cost of the black box at its defaults: ring memory, CPU of the 1 Hz sampling, bytes per snapshot.

    python -m tools.bench.blackbox [--quick]

- Memory: a BlackBox with the default config (60 s window) is filled for 60 s of FakeClock time with real
  samples from this machine's /proc (system every 1 s, process table every 5 s, top 3), link and display
  samples at 1 Hz, four CAN buses' statistics at 1 Hz and the kernel log at the ring's full rate (5 lines/s of
  160 characters: the worst the rate limit lets through); measured with tracemalloc (allocations that stay
  alive), next to the ring's own estimate.
- CPU: thread CPU time of `step()` (the system sample, the process scan every 5th turn) over many turns, as
  a share of one core at one turn per second; psutil's equivalent calls measured beside it.
- Bytes: the snapshot of 40 s (30 s before, 10 s after) built from that ring — as msgpack (the record's data)
  and as the v2 wire batch holding it alone (zlib with the preset dictionary), for a quiet kernel log and for
  a log at the rate limit.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import time
import tracemalloc
from typing import Any

import msgpack
import psutil

from agent import wire
from agent.blackbox.recorder import BlackBox
from agent.blackbox.settings import BlackboxConfig
from agent.clock import FakeClock
from agent.records import Kind, Record, RecordFactory

KMSG_LINE = "[drm:intel_pipe_update_end [i915]] *ERROR* Atomic update failure on pipe A (start=%d end=%d) time 12 us"


def fill(box: BlackBox, clock: FakeClock, seconds: int, kmsg_per_s: int) -> None:
    rec = RecordFactory(clock)
    for s in range(seconds):
        box.step()
        box.tap("link", {"rsrp": -97.0, "rsrq": -11.0, "snr": 8.5, "tech": "lte", "reg": "home", "attached": 1,
                         "datapath": 1, "rtt_ms": 48.2})
        box.tap("display", {"freeze": 0, "black": 0, "frame_age_s": 0.4, "dark": 0, "hb_age_s": 0.1})
        box.observe([rec.metric("can.bus", {"bus": f"can{b}", "state": "active", "load_pct": 38.2, "frames_s": 1843.0,
                                            "err_frames": 0, "drops": 0}) for b in range(4)])
        for i in range(kmsg_per_s):
            clock.advance(1.0 / max(1, kmsg_per_s) * 0.999)
            box.tap("kmsg", {"lvl": 3, "msg": (KMSG_LINE % (s, i)).ljust(170, ".")})
        clock.advance(1.0 - (0.999 if kmsg_per_s else 0.0))


def ring_memory() -> dict[str, Any]:
    cfg = BlackboxConfig()
    clock = FakeClock()
    box = BlackBox(cfg, clock, lambda r: None)
    fill(box, clock, 5, 5)  # warm: interned keys, the reader's thermal zone list
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    fill(box, clock, int(cfg.window_s) + 5, 5)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    st = box.ring.stats()
    return {"traced": after - before, "estimate": st["bytes"], "samples": st["samples"], "box": box,
            "clock": clock}


def sampling_cpu(turns: int) -> dict[str, float]:
    cfg = BlackboxConfig()
    clock = FakeClock()
    box = BlackBox(cfg, clock, lambda r: None)
    box.step()
    t0 = time.thread_time()
    for _ in range(turns):
        clock.advance(cfg.interval_s)
        box.step()
    per_turn = (time.thread_time() - t0) / turns
    # psutil's closest equivalent of one system turn (no process table)
    psutil.cpu_percent(percpu=True)
    t0 = time.thread_time()
    for _ in range(turns):
        psutil.cpu_percent(percpu=True)
        psutil.cpu_times_percent()
        psutil.virtual_memory()
        os.getloadavg()
        psutil.sensors_temperatures()
    ps = (time.thread_time() - t0) / turns
    reader = box.system
    t0 = time.thread_time()
    for _ in range(turns):
        reader.sample()
    sys_only = (time.thread_time() - t0) / turns
    scan = box.scanner
    t0 = time.thread_time()
    for i in range(max(5, turns // 10)):
        scan.scan(float(i), 3)
    per_scan = (time.thread_time() - t0) / max(5, turns // 10)
    return {"per_turn_ms": per_turn * 1000, "core_pct": per_turn / cfg.interval_s * 100, "psutil_ms": ps * 1000,
            "scan_ms": per_scan * 1000, "procs": len(psutil.pids()), "system_ms": sys_only * 1000}


def snapshot_bytes(kmsg_per_s: int) -> dict[str, int]:
    cfg = BlackboxConfig()
    clock = FakeClock()
    out: list[Record] = []
    box = BlackBox(cfg, clock, out.append)
    rec = RecordFactory(clock)
    fill(box, clock, 50, kmsg_per_s)
    begin = rec.begin("display.freeze", {"cause": "hmi_stopped", "detected_after_s": 0.0})
    box.observe([begin])
    fill(box, clock, 11, kmsg_per_s)
    snap = out[0]
    assert snap.kind is Kind.SNAPSHOT and isinstance(snap.data, dict)
    data = msgpack.packb(snap.data)
    batch = wire.encode_batch(wire.BatchId("VIN0000000000001", "hu", 1, snap.boot, 1), [snap], compress="auto")
    return {"data": len(data), "batch": len(batch), "kmsg_lines": len(snap.data.get("kmsg", {}).get("t", [])),
            "system_samples": len(snap.data["system"]["t"]), "truncated": len(snap.data.get("truncated", []))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.blackbox", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer CPU turns")
    args = ap.parse_args(argv)
    mem = ring_memory()
    cpu = sampling_cpu(200 if args.quick else 2000)
    quiet, storm = snapshot_bytes(0), snapshot_bytes(5)
    cores = os.cpu_count()
    print("## Black box (issue 16): ring memory, sampling CPU, snapshot size\n")
    print(f"`python -m tools.bench.blackbox` on {platform.machine()}, {cores} cores, Python "
          f"{platform.python_version()}, {cpu['procs']:.0f} processes running; defaults (60 s window, 1 Hz, top 3 "
          "processes every 5 s, kernel lines at most 5/s of 160 chars).\n")
    print("| what | measured | goal |")
    print("|---|---|---|")
    print(f"| ring memory after 65 s at the kernel-log rate limit (tracemalloc) | {mem['traced'] / 2**20:.2f} MiB "
          f"(ring's own estimate {mem['estimate'] / 2**20:.2f} MiB) | ≤ 2 MiB |")
    print(f"| CPU of one sampling turn (system + 1/5 of a process scan) | {cpu['per_turn_ms']:.3f} ms = "
          f"{cpu['core_pct']:.3f} % of a core at 1 Hz | ≤ 0.1 % |")
    print(f"| … of which one process-table scan ({cpu['procs']:.0f} processes) | {cpu['scan_ms']:.2f} ms "
          "(every 5 s) | |")
    print(f"| … of which the system part (/proc/stat, meminfo, loadavg, thermal zones) | {cpu['system_ms']:.3f} ms | |")
    print(f"| psutil's equivalent of the system part (cpu_percent per core, cpu_times_percent, virtual_memory, "
          f"sensors_temperatures) | {cpu['psutil_ms']:.3f} ms | (why /proc is read by hand) |")
    print(f"| snapshot of 40 s, quiet kernel log: msgpack data / v2 batch | {quiet['data']:,} B / "
          f"{quiet['batch']:,} B ({quiet['system_samples']} system samples) | ≤ 8 KiB |")
    print(f"| snapshot of 40 s, kernel log at the rate limit: msgpack data / v2 batch | {storm['data']:,} B / "
          f"{storm['batch']:,} B ({storm['kmsg_lines']} kernel lines kept, capped by `snapshot_max_kib`) | "
          "≤ 8 KiB |")
    print()
    print("Samples held: " + ", ".join(f"{k} {v}" for k, v in sorted(mem["samples"].items())) + ".")
    print()
    ok = mem["traced"] <= 2 * 2**20 and cpu["core_pct"] <= 0.1 and max(quiet["data"], storm["data"]) <= 8192
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
