"""The backend's side of the black box: snapshots stored by the SQLite and PostgreSQL stores and linked to
their episode, the report's context plot rendered in headless Chromium, and `python -m tools.ingest campaign`
publishing, listing and retiring campaigns on a real mosquitto."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from backend_util import REPO
from test_report import png_pixels

from agent import wire
from agent.blackbox.recorder import BlackBox
from agent.blackbox.settings import BlackboxConfig
from agent.clock import FakeClock
from agent.records import Kind, Record, RecordFactory
from tools.ingest import rows as R
from tools.ingest.campaign import connected, retained
from tools.ingest.store import SqliteStore
from tools.ingest.store_pg import PostgresStore
from tools.localbroker import Mosquitto

TOPIC = "icvq/v1/test/VIN0001/hu/batch"


def freeze_with_context() -> tuple[list[Record], int]:
    """A display freeze with its snapshot, made by the agent's own black box on a FakeClock (1 Hz, 30 s / 10 s):
    a CPU spike 20 s before, the link fading, kernel lines around the start."""
    clock = FakeClock()
    out: list[Record] = []
    second = [0]

    class Sys:
        cpu: float | None = None

        def parse(self, raw: dict[str, object]) -> dict[str, object]:
            return raw

        def take(self) -> dict[str, object]:
            s = second[0]
            spike = 40 <= s <= 42
            self.cpu = 95 if spike else 12 + s % 5
            return {"cpu": 95 if spike else 12 + s % 5, "cpu0": 99 if spike else 15, "cpu1": 91 if spike else 9,
                    "mem": 40.0 + s * 0.2, "avail_mib": 1900 - s, "load1": 0.4, "iowait": 0.5}

    class Procs:
        def scan(self, now: float, n: int) -> list[list[object]]:
            return [["hmi", 80.0 if 40 <= second[0] <= 42 else 5.0]]

    box = BlackBox(BlackboxConfig(), clock, out.append, system=Sys(), scanner=Procs())  # type: ignore[arg-type]
    rec = RecordFactory(clock)
    records: list[Record] = []
    for s in range(75):
        second[0] = s
        box.step()
        box.tap("link", {"rsrp": -85 - max(0, s - 50), "tech": "lte", "datapath": 1})
        if s % 7 == 0 or s in (58, 59, 60):
            box.tap("kmsg", {"lvl": 3 if s >= 58 else 6, "msg": f"[drm] event at {s} s" if s < 58 else
                             "[drm:drm_atomic_helper_wait_for_flip_done] *ERROR* flip_done timed out"})
        if s == 63:
            begin = rec.begin("display.freeze", {"cause": "gpu_hang", "detected_after_s": 3.0})
            records.append(begin)
            box.observe([begin])
        if s == 70:
            assert begin.episode is not None
            records.append(rec.end("display.freeze", begin.episode, {"duration_s": 10.0, "cause": "gpu_hang"}))
        clock.advance(1.0)
    assert len(out) == 1
    assert begin.episode is not None
    return sorted([*records, *out], key=lambda r: r.mono_ms), begin.episode


def store_batch(store: Any) -> tuple[int, dict[str, Any]]:
    recs, episode = freeze_with_context()
    payload = wire.encode_batch(wire.BatchId("VIN0001", "hu", 7, recs[0].boot, 1), recs)
    res = store.write([R.decode(TOPIC, payload, time.time())])
    assert res.stored == 1 and res.dead == 0
    again = store.write([R.decode(TOPIC, payload, time.time())])
    assert again.duplicates == 1, "a resent batch is stored once"
    snap = next(r for r in recs if r.kind is Kind.SNAPSHOT)
    assert isinstance(snap.data, dict)
    return episode, snap.data


def check_stored(store: Any, episode: int, data: dict[str, Any]) -> None:
    rows = store.query("SELECT s.fields, e.name FROM records s JOIN episodes e ON e.vehicle = s.vehicle AND "
                       "e.device = s.device AND e.episode = s.episode WHERE s.kind = 'snapshot' AND s.episode = ?",
                       episode)
    assert len(rows) == 1 and rows[0][1] == "display.freeze"
    assert json.loads(rows[0][0]) == json.loads(json.dumps(data))


def test_sqlite_and_postgres_store_snapshots_linked_to_their_episode(tmp_path: Path, pg_url: str) -> None:
    sq = SqliteStore(tmp_path / "i.db")
    check_stored(sq, *store_batch(sq))
    sq.close()
    pg = PostgresStore(pg_url)
    try:
        check_stored(pg, *store_batch(pg))
    finally:
        pg.close()


def test_report_shows_the_context_plot_in_a_browser(tmp_path: Path, chromium: str) -> None:
    db = tmp_path / "i.db"
    sq = SqliteStore(db)
    store_batch(sq)
    sq.close()
    out = tmp_path / "report.html"
    subprocess.run([sys.executable, "-m", "tools.ingest", "report", "--db", str(db), "-o", str(out)], cwd=REPO,
                   check=True, capture_output=True, timeout=120)
    html = out.read_text()
    ctx = html[html.index("<h2>Context around episodes"):html.index("<h2>Ingest")]
    assert "display.freeze on VIN0001/hu" in ctx and "cause gpu_hang" in ctx
    assert ctx.count("<svg") == 3 and "flip_done timed out" in ctx and "seconds from the episode" in ctx
    page = tmp_path / "context.html"  # the section alone, so the screenshot shows it whole
    page.write_text(html[:html.index("<body>") + 6] + ctx + "</body></html>")
    shot = tmp_path / "context.png"
    res = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--no-first-run", "--hide-scrollbars",
                          f"--user-data-dir={tmp_path / 'chromium'}", f"--screenshot={shot}", "--window-size=900,900",
                          page.as_uri()], capture_output=True, text=True, timeout=90)
    assert shot.exists(), res.stderr[-2000:]
    _, bpp, rows = png_pixels(shot.read_bytes())
    px = [row[x:x + 3] for row in rows for x in range(0, len(row), bpp)]
    blue = sum(1 for p in px if p[2] > 150 and p[0] < 80)               # the series (#1f77b4)
    red = sum(1 for p in px if p[0] > 180 and p[1] < 90 and p[2] < 90)   # the episode start (#d62728)
    assert blue > 300 and red > 50, (blue, red)


def _cli(port: int, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.ingest", "campaign", "--port", str(port), "--fleet", "test",
                           "--wait", "0.5", *args], cwd=REPO, input=stdin.decode() if stdin else None,
                          capture_output=True, text=True, timeout=60)


def test_campaign_command_publishes_lists_and_retires(tmp_path: Path, broker: Mosquitto) -> None:
    doc = {"id": "hangs", "trigger": {"name": "display.gpu_hang"}, "capture": ["system", "kmsg"],
           "pre_s": 20, "post_s": 5, "end": time.time() + 86400}
    bad = _cli(broker.port, "publish", "-", stdin=json.dumps({**doc, "run": "rm -rf /"}).encode())
    assert bad.returncode == 1 and "run: unknown key" in bad.stderr
    ok = _cli(broker.port, "publish", "-", stdin=json.dumps(doc).encode())
    assert ok.returncode == 0, ok.stderr
    per_vehicle = _cli(broker.port, "publish", "-", "--vehicle", "VIN0001",
                       stdin=json.dumps({**doc, "id": "one-car"}).encode())
    assert per_vehicle.returncode == 0, per_vehicle.stderr
    listed = json.loads(_cli(broker.port, "list", "--json").stdout)
    assert {(r["id"], r["scope"], r["state"]) for r in listed} == {("hangs", "fleet", "active"),
                                                                    ("one-car", "VIN0001", "active")}
    assert _cli(broker.port, "retire", "hangs").returncode == 0
    got = retained("127.0.0.1", broker.port, ["icvq/v1/test/_campaigns/hangs"], 0.5)
    after = json.loads(got["icvq/v1/test/_campaigns/hangs"])
    assert after["end"] <= time.time() and after["revision"] == 1  # offline units learn it on reconnect
    states = {r["id"]: r["state"] for r in json.loads(_cli(broker.port, "list", "--json").stdout)}
    assert states == {"hangs": "ended", "one-car": "active"}
    assert _cli(broker.port, "retire", "one-car", "--vehicle", "VIN0001", "--purge").returncode == 0
    assert [r["id"] for r in json.loads(_cli(broker.port, "list", "--json").stdout)] == ["hangs"]


def test_campaign_command_refuses_what_would_do_nothing(tmp_path: Path, broker: Mosquitto) -> None:
    """Found in an acceptance run: a document already ended was published (rc 0, every unit ignores it);
    `retire ID --purge` without --vehicle cleared the empty fleet topic and reported success while the
    vehicle's campaign ran on; a missing file and garbage retained on a campaign topic gave tracebacks."""
    ended = {"id": "late", "trigger": {"name": "display.gpu_hang"}, "end": time.time() - 60}
    r = _cli(broker.port, "publish", "-", stdin=json.dumps(ended).encode())
    assert r.returncode == 1 and "end:" in r.stderr and "already passed" in r.stderr, r.stderr
    r = _cli(broker.port, "publish", str(tmp_path / "missing.json"))
    assert r.returncode == 1 and "missing.json" in r.stderr and "Traceback" not in r.stderr, r.stderr
    doc = {"id": "one-car", "trigger": {"name": "display.gpu_hang"}, "end": time.time() + 3600}
    assert _cli(broker.port, "publish", "-", "--vehicle", "VIN0001", stdin=json.dumps(doc).encode()).returncode == 0
    r = _cli(broker.port, "retire", "one-car", "--purge")
    assert r.returncode == 1 and "--vehicle" in r.stderr, r.stderr
    with connected("127.0.0.1", broker.port) as c:  # another publisher's garbage, deeper than json can parse
        c.publish("icvq/v1/test/_campaigns/junk", b"[" * 5000 + b"]" * 5000, qos=1, retain=True).wait_for_publish(10)
    r = _cli(broker.port, "list", "--json")
    assert r.returncode == 0, r.stderr
    assert [x["id"] for x in json.loads(r.stdout)] == ["one-car"]
    assert _cli(broker.port, "retire", "one-car", "--vehicle", "VIN0001", "--purge").returncode == 0
