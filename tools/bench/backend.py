"""python -m tools.bench.backend: ingest throughput per worker, scaling with workers, PostgreSQL.

Method: a fresh mosquitto per run; the workers' persistent sessions are registered first, then the traffic is
published and queued in those sessions (so the publisher's CPU is not part of the measurement), then the
real `python -m tools.ingest run` workers start and drain it. Throughput = records / (time the last batch was
committed minus time the first one was), polled from the database. Traffic: the fleet model's records encoded
by the agent's encoder (metrics every 5 s plus episodes), in batches as the direct loader cuts them.
Prints a markdown section.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent import wire
from tools.ingest.pgtemp import TempPostgres
from tools.sim.fleet_direct import payloads
from tools.sim.fleet_model import Mix, fleet

REPO = Path(__file__).resolve().parents[2]
GROUP = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        # Unlimited queue per session: the workers' sessions hold the whole run's traffic before they start.
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                             "max_queued_messages 0\nmax_inflight_messages 0\nlog_dest none\n")
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start: run `make deps`")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def client_id(i: int) -> str:
    return f"bench-worker-{i}"


def register_sessions(port: int, n: int) -> None:
    for i in range(n):
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id(i), protocol=MQTTProtocolVersion.MQTTv5)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.connect("127.0.0.1", port, clean_start=True, properties=props)
        c.loop_start()
        c.subscribe(f"$share/{GROUP}/icvq/v1/+/+/+/batch", qos=1)[1]
        time.sleep(0.2)
        c.disconnect()
        c.loop_stop()


def publish(port: int, msgs: list[tuple[str, bytes]]) -> None:
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    c.max_inflight_messages_set(1000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    infos = [c.publish(t, p, qos=1) for t, p in msgs]
    for info in infos:
        info.wait_for_publish(60)
    c.disconnect()
    c.loop_stop()


def traffic(target_records: int, metric_interval_s: float, batch_records: int) -> tuple[list[tuple[str, bytes]], int]:
    days = 1.0
    cars = fleet(max(1, int(target_records / (1.6 * 35 * 60 / metric_interval_s) / days)), 7, days, Mix(),
                 metric_interval_s=metric_interval_s)
    msgs: list[tuple[str, bytes]] = []
    n = 0
    for car in cars:
        for t, p in payloads(car, batch_records=batch_records):
            if t.endswith("/batch"):
                b = wire.decode(p)
                assert isinstance(b, wire.Batch)
                n += len(b.records)
                msgs.append((t, p))
        if n >= target_records:
            break
    return msgs, n


def counter(db: str) -> Callable[[], int]:
    if db.startswith("postgresql://"):
        import psycopg

        conn = psycopg.connect(db, autocommit=True)

        def pg_count() -> int:
            try:
                row = conn.execute("SELECT COUNT(*) FROM batches").fetchone()
            except psycopg.errors.UndefinedTable:
                return 0
            return int(row[0]) if row else 0
        return pg_count

    def sqlite_count() -> int:
        if not Path(db).exists():
            return 0
        c = sqlite3.connect(db, timeout=30)
        try:
            return int(c.execute("SELECT COUNT(*) FROM batches").fetchone()[0])
        except sqlite3.OperationalError:
            return 0
        finally:
            c.close()
    return sqlite_count


def cpu_s(pids: list[int], children: bool = False) -> float:
    """User+system CPU seconds of processes (and their children, for a database server) so far."""
    total = 0.0
    for pid in pids:
        try:
            procs = [psutil.Process(pid)]
            if children:
                procs += procs[0].children(recursive=True)
            for p in procs:
                t = p.cpu_times()
                total += t.user + t.system
        except psutil.Error:
            pass
    return total


def run_once(msgs: list[tuple[str, bytes]], n_records: int, workers: int, db: str, tmp: Path,
             db_pid: int | None = None) -> dict[str, float]:
    broker = Broker(tmp)
    procs: list[subprocess.Popen[str]] = []
    try:
        register_sessions(broker.port, workers)
        publish(broker.port, msgs)
        broker_cpu0 = cpu_s([broker.proc.pid])
        db_cpu0 = cpu_s([db_pid], children=True) if db_pid else 0.0
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        count = counter(db)
        started = time.monotonic()
        for i in range(workers):
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "tools.ingest", "run", "--port", str(broker.port), "--db", db, "--group",
                 GROUP, "--client-id", client_id(i), "--no-status", "--log-level", "warning"],
                cwd=REPO, env=env, stdout=subprocess.PIPE, text=True))
        first = last = 0.0
        seen = 0
        deadline = time.monotonic() + 600
        while seen < len(msgs) and time.monotonic() < deadline:
            seen = count()
            now = time.monotonic()
            if seen and not first:
                first = now
            if seen >= len(msgs):
                last = now
            time.sleep(0.05)
        if seen < len(msgs):
            raise RuntimeError(f"only {seen} of {len(msgs)} batches stored")
        span = max(last - first, 1e-3)
        # CPU over the whole drain (worker start-up included): where the two cores went.
        result = {"workers": workers, "records": n_records, "batches": len(msgs), "seconds": span,
                "rec_s": n_records / span, "startup_s": first - started,
                "worker_cpu": cpu_s([p.pid for p in procs]), "broker_cpu": cpu_s([broker.proc.pid]) - broker_cpu0,
                "db_cpu": cpu_s([db_pid], children=True) - db_cpu0 if db_pid else 0.0,
                "wall": time.monotonic() - started}
    finally:
        summaries = stop_workers(procs)
        broker.stop()
    # Each worker's own split of its time: decoding vs store transactions (lock waits and fsync included).
    result["decode_s"] = sum(s.get("decode_s", 0.0) for s in summaries)
    result["write_s"] = sum(s.get("write_s", 0.0) for s in summaries)
    return result


def stop_workers(procs: list[subprocess.Popen[str]]) -> list[dict[str, float]]:
    for p in procs:
        p.send_signal(signal.SIGTERM)
    out = []
    for p in procs:
        try:
            stdout, _ = p.communicate(timeout=30)
            out.append(json.loads(stdout.strip().splitlines()[-1]))
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            p.kill()
    return out


def fresh_sqlite(tmp: Path, name: str) -> str:
    p = tmp / name
    for suffix in ("", "-wal", "-shm"):
        Path(str(p) + suffix).unlink(missing_ok=True)
    return str(p)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.backend", description=__doc__)
    ap.add_argument("--records", type=int, default=600_000, help="records per run (default %(default)s)")
    ap.add_argument("--workers", default="1,2,4", help="worker counts to compare (default %(default)s)")
    ap.add_argument("--batch-records", type=int, default=300, help="records per batch (default %(default)s)")
    ap.add_argument("--pg", default="temp", help="'temp' (own throwaway cluster), a postgresql:// URL, or 'none'")
    ap.add_argument("--pg-workers", default="1,2", help="worker counts for PostgreSQL (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="runs per configuration; the median is reported (default %(default)s)")
    args = ap.parse_args(argv)

    def median_of(run: Callable[[], dict[str, float]]) -> dict[str, float]:
        """The machine is shared: run several times, keep the median run and the spread."""
        runs = sorted((run() for _ in range(max(1, args.repeat))), key=lambda r: r["rec_s"])
        mid = dict(runs[len(runs) // 2])
        mid["lo"], mid["hi"] = runs[0]["rec_s"], runs[-1]["rec_s"]
        return mid

    load0 = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="icvq-bench-"))
    results: list[tuple[str, dict[str, float]]] = []
    try:
        msgs, n = traffic(args.records, 5.0, args.batch_records)
        print(f"traffic: {len(msgs):,} batches, {n:,} records ({n / len(msgs):.0f} per batch), "
              f"{sum(len(p) for _, p in msgs) / 2**20:.1f} MiB", file=sys.stderr)
        for w in (int(x) for x in args.workers.split(",")):
            def sqlite_run(w: int = w) -> dict[str, float]:
                return run_once(msgs, n, w, fresh_sqlite(tmp, f"w{w}.db"), tmp)

            r = median_of(sqlite_run)
            results.append(("SQLite", r))
            print(f"sqlite {w} worker(s): {r['rec_s']:,.0f} rec/s", file=sys.stderr)
        small, n_small = traffic(args.records // 3, 5.0, 25)
        r = median_of(lambda: run_once(small, n_small, 1, fresh_sqlite(tmp, "small.db"), tmp))
        results.append(("SQLite, 25 rec/batch", r))
        if args.pg != "none":
            pg = TempPostgres() if args.pg == "temp" else None
            url = pg.start().url if pg else args.pg
            try:
                for w in (int(x) for x in args.pg_workers.split(",")):
                    def pg_run(w: int = w) -> dict[str, float]:
                        import psycopg

                        with psycopg.connect(url, autocommit=True) as c:
                            c.execute("DROP SCHEMA public CASCADE")
                            c.execute("CREATE SCHEMA public")
                        return run_once(msgs, n, w, url, tmp, pg.postmaster_pid() if pg else None)

                    r = median_of(pg_run)
                    results.append(("PostgreSQL", r))
                    print(f"postgres {w} worker(s): {r['rec_s']:,.0f} rec/s", file=sys.stderr)
            finally:
                if pg:
                    pg.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(render(results, args, (load0, os.getloadavg()[0])))
    return 0


def render(results: list[tuple[str, dict[str, float]]], args: argparse.Namespace,
           load: tuple[float, float]) -> str:
    base: dict[str, float] = {}
    lines = ["## Backend ingest throughput", "",
             f"`python -m tools.bench.backend --records {args.records} --workers {args.workers}` on "
             f"{os.cpu_count()} cores; broker, workers and database share them (1-minute load average "
             f"{load[0]:.1f} before, {load[1]:.1f} after: other processes on the machine count too). "
             "Cores used = CPU seconds of workers + broker + database server / wall seconds of the drain.", "",
             f"Median of {args.repeat} runs per row; records/s range in brackets.", "",
             "| store | workers | records | batches | rec/batch | seconds | records/s [range] | vs 1 worker | "
             "CPU s: workers / broker / db server (wall s) | cores used | worker time: decode / store s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|"]
    for store, r in results:
        if r["workers"] == 1:
            base.setdefault(store, r["rec_s"])
        ratio = r["rec_s"] / base[store] if store in base else 1.0
        lines.append(f"| {store} | {r['workers']:.0f} | {r['records']:,.0f} | {r['batches']:,.0f} | "
                     f"{r['records'] / r['batches']:.0f} | {r['seconds']:.1f} | {r['rec_s']:,.0f} "
                     f"[{r['lo']:,.0f}-{r['hi']:,.0f}] | {ratio:.2f}x | "
                     f"{r['worker_cpu']:.1f} / {r['broker_cpu']:.1f} / {r['db_cpu']:.1f} ({r['wall']:.1f}) | "
                     f"{(r['worker_cpu'] + r['broker_cpu'] + r['db_cpu']) / r['wall']:.2f} | "
                     f"{r['decode_s']:.1f} / {r['write_s']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
