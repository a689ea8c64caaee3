"""Flash wear: bytes the agent writes to its storage per hour and per record, at the default config.

`python -m tools.bench.flash [--minutes N] [--quick]` runs the real daemon (default config; only paths, broker
address and vehicle set) with its spool and history on a fresh ext4 file system on a loop device, and a local
mosquitto with a subscriber (online) or no broker at all (offline: the spool grows). Two figures per case:
- *process*: `/proc/PID/io` `write_bytes`, what the agent made the kernel write for it (page-granular, so a
  4,120-byte WAL frame that straddles pages counts 8 KiB);
- *device*: sectors written to the loop device (`/sys/block/loopN/stat`), which adds what ext4 writes on
  the agent's behalf (journal, inode and bitmap updates): closest to what reaches the flash.
Records are the agent's own count (`icvq status --json`, counters.accepted) over the same window. Needs root
(losetup, mount). Hand-written because no tool measures one daemon's writes to one file system.
Goal (issue 11): ≤ 100 MB per day at the default config.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from tools.localbroker import Mosquitto, free_port
from tools.tomlw import to_toml

REPO = Path(__file__).resolve().parents[2]
GOAL_MB_PER_DAY = 100.0
LOSETUP = threading.Lock()


class LoopFs:
    """A fresh ext4 file system in a file, on a loop device, mounted under `root`."""

    def __init__(self, root: Path, size_mib: int = 256) -> None:
        self.image = root / "flash.img"
        self.mnt = root / "mnt"
        self.size_mib = size_mib
        self.dev = ""

    def __enter__(self) -> LoopFs:
        self.mnt.mkdir()
        with self.image.open("wb") as f:
            f.truncate(self.size_mib << 20)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self.image)], check=True)
        with LOSETUP:  # two `losetup --find` at once may pick the same free device
            self.dev = subprocess.run(["losetup", "--find", "--show", str(self.image)], check=True,
                                      capture_output=True, text=True).stdout.strip()
        subprocess.run(["mount", self.dev, str(self.mnt)], check=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        subprocess.run(["umount", str(self.mnt)], check=False)
        subprocess.run(["losetup", "-d", self.dev], check=False)

    def sectors_written(self) -> int:
        os.sync()
        fields = Path(f"/sys/block/{Path(self.dev).name}/stat").read_text().split()
        return int(fields[6])


def write_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def accepted(conf: Path) -> int:
    out = subprocess.run([sys.executable, "-m", "agent.cli", "status", "-c", str(conf), "--json"],
                         capture_output=True, text=True, timeout=30, cwd=str(REPO),
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    return int(json.loads(out.stdout).get("counters", {}).get("accepted", 0))


def run_case(tmp: Path, online: bool, minutes: float, commit_interval_s: float | None = None) -> dict[str, Any]:
    name = ("online" if online else "offline") + ("" if commit_interval_s is None else f"-{commit_interval_s:g}s")
    work = tmp / name
    work.mkdir()
    broker = Mosquitto(work / "broker").start() if online else None
    port = broker.port if broker else free_port()
    sub = None
    if broker:
        sub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        sub.connect("127.0.0.1", port)
        sub.subscribe("icvq/#", qos=1)
        sub.loop_start()
    try:
        with LoopFs(work) as fs:
            data = fs.mnt / "icvq"
            conf = work / "agent.toml"
            conf.write_text(to_toml({
                "vehicle": {"id": "FLASH0001", "device": "hu", "fleet": "bench"},
                "uplink": {"host": "127.0.0.1", "port": port},
                "spool": {"path": str(data / "spool.db"), **({} if commit_interval_s is None else
                                                            {"commit_interval_s": commit_interval_s})},
                "history": {"path": str(data / "history.db")},
                "control": {"socket": str(work / "control.sock"), "group": ""},
            }))
            log = (work / "agent.log").open("wb")
            proc = subprocess.Popen([sys.executable, "-m", "agent", "--config", str(conf)], stdout=log,
                                    stderr=log, cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)})
            try:
                time.sleep(15)          # past start-up (spool creation, first health records)
                w0, s0, n0, t0 = write_bytes(proc.pid), fs.sectors_written(), accepted(conf), time.monotonic()
                time.sleep(minutes * 60)
                w1, s1, n1, t1 = write_bytes(proc.pid), fs.sectors_written(), accepted(conf), time.monotonic()
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(30)
            spool_files = sum(p.stat().st_size for p in data.glob("spool.db*"))
    finally:
        if sub:
            sub.loop_stop()
            sub.disconnect()
        if broker:
            broker.kill()
    hours = (t1 - t0) / 3600
    n = max(n1 - n0, 1)
    proc_b, dev_b = w1 - w0, (s1 - s0) * 512
    return {"case": name, "minutes": round((t1 - t0) / 60, 1), "records": n1 - n0,
            "process_bytes_per_h": proc_b / hours, "device_bytes_per_h": dev_b / hours,
            "process_bytes_per_record": proc_b / n, "device_bytes_per_record": dev_b / n,
            "device_mb_per_day": dev_b / hours * 24 / 1e6, "process_mb_per_day": proc_b / hours * 24 / 1e6,
            "spool_files_bytes": spool_files}


def bound_case(tmp: Path, cap_mib: float = 1.0, fs_mib: int = 3) -> dict[str, Any]:
    """The issue's self-fill: `max_mib` on a small tmpfs, the broker away, 40 records per commit. Returns the
    largest total of the spool's files seen after any commit, and the split at the end."""
    from agent import spool_disk
    from agent.records import Kind, Record
    from agent.spool import Spool

    mnt = tmp / "bound"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={fs_mib}m", "tmpfs", str(mnt)], check=True)
    try:
        sp = Spool(mnt / "spool.db", int(cap_mib * 2**20))
        sp.open()
        worst = n = 0
        t0 = time.perf_counter()
        for i in range(2000):
            sp.put([Record(Kind.METRIC, "system.cpu_pct", 1_700_000_000_000 + i, i, "ab" * 16, True,
                           {"v": float(k), "core": k}) for k in range(40)])
            n += 40
            worst = max(worst, sp.disk_bytes())
        put_ms = (time.perf_counter() - t0) / 2000 * 1000
        split = {p.name.removeprefix("spool.db") or "db": p.stat().st_blocks * 512
                 for p in spool_disk.files(mnt / "spool.db") if p.exists()}
        drops = sum(sp.drops.values())
        sp.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
    return {"cap": int(cap_mib * 2**20), "worst": worst, "split": split, "records": n, "dropped": drops,
            "put_ms": put_ms}


def bound_markdown(b: dict[str, Any]) -> str:
    split = ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in b["split"].items())
    return (f"Self-fill, `max_mib = {b['cap'] / 2**20:g}` on a 3 MiB tmpfs, {b['records']:,} records in commits of "
            f"40: the spool's files peaked at **{b['worst'] / 1024:.0f} KiB** of {b['cap'] / 1024:.0f} KiB "
            f"(at the end: {split}); {b['dropped']:,} records evicted and counted; "
            f"{b['put_ms']:.2f} ms per commit on tmpfs.")


def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["### Flash wear at the default config (`python -m tools.bench.flash`)", "",
           "| case | window | records | process MB/day | device MB/day | process B/record | device B/record |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['case']} | {r['minutes']} min | {r['records']} | {r['process_mb_per_day']:.1f} | "
                   f"{r['device_mb_per_day']:.1f} | {r['process_bytes_per_record']:,.0f} | "
                   f"{r['device_bytes_per_record']:,.0f} |")
    worst = max(r["device_mb_per_day"] for r in rows)
    out += ["", f"Goal ≤ {GOAL_MB_PER_DAY:.0f} MB/day: {'met' if worst <= GOAL_MB_PER_DAY else 'NOT met'} "
            f"(worst case {worst:.1f} MB/day at the device)."]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.flash", description=__doc__)
    ap.add_argument("--minutes", type=float, default=10.0, help="measuring window per case")
    ap.add_argument("--quick", action="store_true", help="2-minute windows")
    ap.add_argument("--json", action="store_true", help="print the raw figures as JSON too")
    ap.add_argument("--bound-only", action="store_true", help="only the disk-bound check (seconds, tmpfs)")
    ap.add_argument("--commit-intervals", default="", help="comma-separated [spool] commit_interval_s values to "
                    "compare (default: the shipped default only)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("tools.bench.flash needs root (losetup, mount)", file=sys.stderr)
        return 1
    minutes = 2.0 if args.quick else args.minutes
    intervals: list[float | None] = [float(x) for x in args.commit_intervals.split(",")] if args.commit_intervals \
        else [None]
    with tempfile.TemporaryDirectory(prefix="icvq-flash-") as tmp:
        bound = bound_case(Path(tmp))
        cases = [] if args.bound_only else [(on, ci) for ci in intervals for on in (True, False)]
        # Side by side: each case is one lightly loaded agent on its own loop device and broker.
        with ThreadPoolExecutor(max_workers=max(1, len(cases))) as pool:
            rows = list(pool.map(lambda c: run_case(Path(tmp), c[0], minutes, c[1]), cases))
    if rows:
        print(markdown(rows))
        print()
    print(bound_markdown(bound))
    if args.json:
        print(json.dumps({"wear": rows, "bound": bound}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
