"""`make demo`: the whole loop on this machine for about a minute, then a report of what arrived.

local mosquitto (free port) → icvq-agent on a simulated vehicle (system probe + every scenario part in
tools/demo_parts/) → MQTT → tools.ingest → SQLite. Ends by itself; exit status 0 only if every part's expected
records reached the backend. `python -m tools.demo drm` shows a Wayland head unit on DRM/KMS instead (about a
minute in the tools/vm guest; tools/demo_drm.py).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import pkgutil
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agent.blackbox.columns import expand
from tools import demo_parts
from tools.localbroker import Mosquitto
from tools.tomlw import to_toml

REPO = Path(__file__).resolve().parents[1]


def say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def report(db: Path, expected: dict[str, list[str]]) -> bool:
    con = sqlite3.connect(db)
    q = con.execute
    n_batches, n_records = q("SELECT COUNT(*), COALESCE(SUM(n_records), 0) FROM batches").fetchone()
    print()
    say(f"backend stored {n_batches} batches, {n_records} records "
        f"({q('SELECT COUNT(*) FROM dead_letter').fetchone()[0]} rejected payloads)")
    print(f"\n  {'record name':<28} {'type':<8} {'count':>6}")
    for name, kind, n in q("SELECT name, kind, COUNT(*) FROM records GROUP BY name, kind ORDER BY name, kind"):
        print(f"  {name:<28} {kind:<8} {n:>6}")
    eps = q("SELECT name, fields FROM records WHERE kind = 'end' ORDER BY t").fetchall()
    if eps:
        print("\n  episodes (ended):")
        for name, fields in eps:
            f = json.loads(fields or "{}")
            brief = {k: f[k] for k in ("duration_s", "cause", "signal", "sensor", "evidence") if k in f}
            print(f"    {name:<22} {json.dumps(brief)[:110]}")
    snaps = q("SELECT COALESCE(e.name, s.name), s.fields FROM records s LEFT JOIN episodes e ON e.vehicle = s.vehicle "
              "AND e.device = s.device AND e.episode = s.episode WHERE s.kind = 'snapshot' ORDER BY s.t").fetchall()
    if snaps:
        print("\n  black-box context (docs/blackbox.md):")
        for name, fields in snaps:
            f = json.loads(fields or "{}")
            cpu = [v for v in expand((f.get("system") or {}).get("cpu")) if isinstance(v, (int, float))]
            lines = len(expand((f.get("kmsg") or {}).get("t")))
            print(f"    {name:<22} {f.get('pre_s'):g} s before, {f.get('post_s'):g} s after; CPU peak "
                  f"{max(cpu, default=0):.0f} %; {lines} kernel lines; {len(fields or '')} B as JSON")
    for (fields,) in q("SELECT fields FROM status WHERE kind = 'birth' ORDER BY received DESC LIMIT 1"):
        f = json.loads(fields)
        inv = f.get("inventory", {})
        say(f"birth: agent {f.get('agent')}, config {f.get('config')}, {inv.get('os')}, kernel {inv.get('kernel')}, "
            f"components {inv.get('components')}")
    for (fields,) in q("SELECT fields FROM status WHERE kind = 'death' ORDER BY received DESC LIMIT 1"):
        say(f"death: clean={json.loads(fields).get('clean')} (retained; the Last Will says clean=false)")
    ok = True
    names = {n for (n,) in q("SELECT DISTINCT name FROM records")}
    for part, want in expected.items():
        missing = [w for w in want if w not in names]
        say(f"{part}: {'OK' if not missing else 'MISSING ' + ', '.join(missing)}")
        ok &= not missing
    return ok


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["drm"]:  # the DRM/KMS head unit in the qemu guest (~1 min): tools/demo_drm.py
        from tools import demo_drm
        return demo_drm.main(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds the agent runs (default 60)")
    ap.add_argument("--out", default=str(REPO / "demo-out"), help="work directory (recreated)")
    ap.add_argument("--only", nargs="*", help="run only these demo parts")
    args = ap.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    broker = Mosquitto(out / "broker").start()
    say(f"mosquitto listening on 127.0.0.1:{broker.port}")
    db = out / "ingest.db"
    ingest = subprocess.Popen([sys.executable, "-m", "tools.ingest", "--port", str(broker.port), "--db", str(db)],
                              cwd=REPO, stdout=(out / "ingest.out").open("wb"), stderr=(out / "ingest.log").open("wb"))
    sections: dict[str, Any] = {
        "vehicle": {"id": "DEMO0000000000001", "device": "hu", "fleet": "demo"},
        "uplink": {"host": "127.0.0.1", "port": broker.port, "batch_linger_s": 1.0, "backoff_max_s": 2.0,
                   "reconnect_probe_s": 1.0},
        "spool": {"path": str(out / "spool.db"), "max_mib": 16.0, "commit_interval_s": 1.0},
        "history": {"path": str(out / "history.db")},
        "control": {"socket": str(out / "control.sock"), "group": ""},
        "agent": {"nice": 0, "io_idle": False, "health_interval_s": 10.0, "components": {"hmi": "3.2.1"}},
        "probes.system": {"interval_s": 2.0},
    }
    expected: dict[str, list[str]] = {"system": ["system.cpu_pct", "agent.rss_mib", "agent.spool"]}
    ok = True
    with contextlib.ExitStack() as stack:
        for m in pkgutil.iter_modules(demo_parts.__path__):
            if args.only is not None and m.name not in args.only:
                continue
            mod = importlib.import_module(f"tools.demo_parts.{m.name}")
            try:
                part_sections = stack.enter_context(mod.scenario(out / m.name, args.duration))
            except Exception as e:  # noqa: BLE001 - one broken part must not hide the others
                say(f"part {m.name} could not start: {type(e).__name__}: {e}")
                ok = False
                continue
            sections.update(part_sections)
            expected[m.name] = list(getattr(mod, "EXPECT", []))
            say(f"part {m.name}: {getattr(mod, 'TITLE', m.name)}")
        conf = out / "agent.toml"
        conf.write_text(to_toml(sections))
        agent_log = out / "agent.log"
        agent = subprocess.Popen([sys.executable, "-m", "agent", "--config", str(conf)], cwd=REPO,
                                 stderr=agent_log.open("wb"))
        say(f"agent running (config {conf}, log {agent_log}) for {args.duration:.0f} s ...")
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < args.duration:
                time.sleep(min(10.0, args.duration - (time.monotonic() - t0)))
                if agent.poll() is not None:
                    say(f"agent exited early with {agent.returncode}; see {agent_log}")
                    ok = False
                    break
                n = sqlite3.connect(db).execute("SELECT COUNT(*) FROM records").fetchone()[0] if db.exists() else 0
                say(f"t+{time.monotonic() - t0:4.0f} s: backend has {n} records")
        finally:
            if agent.poll() is None:
                agent.send_signal(signal.SIGTERM)
                agent.wait(30)
    time.sleep(1.5)
    ingest.send_signal(signal.SIGTERM)
    ingest.wait(15)
    broker.stop()
    ok &= report(db, expected)
    say(f"agent exit status {agent.returncode}; files in {out}")
    say("a Wayland head unit on DRM/KMS (weston in the qemu guest, ~1 min): python -m tools.demo drm")
    return 0 if ok and agent.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
