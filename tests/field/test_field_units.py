"""The field parts on their own: history pruning, redaction, parsing, bundle reading, and the control server
inside a real in-process daemon (observers in the commit group, tail drop-and-count)."""

from __future__ import annotations

import io
import json
import socket
import tarfile
import time
from pathlib import Path

import pytest
from agentproc import base_config, write_config
from broker import Mosquitto
from fieldkit import Lines, connect, request

from agent import bundle, history
from agent.config import HistoryConfig, load
from agent.daemon import Daemon
from agent.fieldcli.fmt import age, parse_since
from agent.fieldcli.redact import Scrubber, redact_plain
from agent.records import Kind, Record


def rec(kind: Kind, name: str, t: float, data: dict | None = None) -> Record:
    return Record(kind, name, int(t * 1000), 0, "boot", True, data or {}, 1 if kind in (Kind.BEGIN, Kind.END)
                  else None)


def test_history_keeps_events_only_and_prunes_by_age(tmp_path: Path) -> None:
    now = time.time()
    h = history.History(HistoryConfig(path=str(tmp_path / "h.db"), max_days=1))
    h.open()
    h([rec(Kind.EVENT, "old", now - 2 * 86400), rec(Kind.METRIC, "m", now), rec(Kind.HEALTH, "hh", now),
       rec(Kind.BEGIN, "ep", now), rec(Kind.END, "ep", now + 1)])
    h.prune()
    rows, more, _ = history.query_file(tmp_path / "h.db", history.Query())
    assert [r["name"] for r in rows] == ["ep", "ep"] and not more
    rows, more, _ = history.query_file(tmp_path / "h.db", history.Query(limit=1))
    assert rows[0]["type"] == "end" and more
    h.close()


def test_history_prunes_by_size(tmp_path: Path) -> None:
    h = history.History(HistoryConfig(path=str(tmp_path / "h.db"), max_mib=0.25))
    h.open()
    now = time.time()
    for i in range(40):
        h([rec(Kind.EVENT, f"e{i}", now, {"blob": "x" * 2000}) for _ in range(20)])
    assert h.used_bytes() <= 0.25 * 2**20
    assert (tmp_path / "h.db").stat().st_size < 0.5 * 2**20  # freed pages go back to the filesystem
    rows, _, _ = history.query_file(tmp_path / "h.db", history.Query(limit=1))
    assert rows[0]["name"] == "e39"  # the newest survive
    h.close()


def test_history_holds_no_connection_between_rare_writes(tmp_path: Path) -> None:
    """An open connection holds ~120 KiB for a write that comes a few times a minute (issue 13: idle RSS):
    a write after a quiet minute closes it at once, a burst keeps it until a minute passes without one."""
    h = history.History(HistoryConfig(path=str(tmp_path / "h.db")))
    h.open()
    h([rec(Kind.EVENT, "start", time.time())])
    assert h._db is None                                  # alone: closed again at once
    h([rec(Kind.BEGIN, "ep", time.time())])               # reopened
    h([rec(Kind.END, "ep", time.time())])
    assert h._db is not None                              # a burst: kept open
    h.idle_close()
    assert h._db is not None
    h._last_write -= history.IDLE_CLOSE_S                 # a quiet minute: the daemon's trim turn closes it
    h.idle_close()
    assert h._db is None
    h.prune()
    rows, _, _ = history.query_file(tmp_path / "h.db", history.Query())
    assert [r["name"] for r in rows] == ["ep", "ep", "start"] and h.errors == 0 and h.written == 3
    h.close()


def test_the_agent_reads_its_history_live_between_its_writes(tmp_path: Path) -> None:
    """Between rare writes the writer holds no connection, so the -wal is gone; the agent's own reader (the
    control socket) must still see a write that lands while it reads: an `immutable` open did not."""
    h = history.History(HistoryConfig(path=str(tmp_path / "h.db")))
    h.open()
    h([rec(Kind.EVENT, "first", time.time())])
    assert h._db is None and not (tmp_path / "h.db-wal").exists()
    db, note = history.open_ro(tmp_path / "h.db", live=True)
    try:
        assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1 and note == ""
        h([rec(Kind.EVENT, "second", time.time())])       # the pipeline thread writes meanwhile
        assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 2
    finally:
        db.close()
    rows, _, _ = history.query_file(tmp_path / "h.db", history.Query(), live=True)
    assert [r["name"] for r in rows] == ["second", "first"]
    h.close()


def test_history_write_failure_never_raises(tmp_path: Path) -> None:
    h = history.History(HistoryConfig(path=str(tmp_path / "h.db")))
    h.open()
    h._conn.close()  # the file system went away under us
    h([rec(Kind.EVENT, "e", time.time())])
    assert h.errors == 1 and h.last_error
    h.close()


def test_parse_since_and_age() -> None:
    assert parse_since("2h", now=10_000) == 10_000 - 7200
    assert parse_since("1d12h", now=200_000) == 200_000 - 1.5 * 86400
    assert parse_since("2024-05-01T12:00:00Z") == 1714564800
    with pytest.raises(ValueError):
        parse_since("yesterday")
    assert [age(x) for x in (3, 252, 7380, 270000)] == ["3s", "4m12s", "2h03m", "3d03h"]


def test_scrubber_and_name_based_redaction() -> None:
    found: list[str] = []
    out = redact_plain({"uplink": {"username": "tok_abc123", "password_file": "/etc/p", "port": 1883},
                        "probes": {"x": {"api_key": "k-123456", "token_path": "/t"}}}, found)
    assert out["uplink"] == {"username": "<redacted>", "password_file": "/etc/p", "port": 1883}
    assert out["probes"]["x"] == {"api_key": "<redacted>", "token_path": "/t"}
    s = Scrubber()
    for v in found:
        s.add(v)
    s.add('we"ird\\pw')
    data = b'user tok_abc123 key k-123456 json "we\\"ird\\\\pw"\n-----BEGIN EC PRIVATE KEY-----\nAAAA\n' \
           b'-----END EC PRIVATE KEY-----\n'
    clean = s(data)
    assert b"tok_abc123" not in clean and b"k-123456" not in clean and b"ird" not in clean
    assert b"AAAA" not in clean and b"<redacted private key>" in clean


def test_inspect_refuses_what_is_not_a_bundle() -> None:
    with pytest.raises(bundle.BadBundle):
        bundle.read(io.BytesIO(b"not gzip at all"))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        ti = tarfile.TarInfo("../../etc/evil")
        ti.size = 3
        tar.addfile(ti, io.BytesIO(b"bad"))
    buf.seek(0)
    with pytest.raises(bundle.BadBundle):
        bundle.read(buf)


def test_in_process_daemon_history_tail_and_slow_subscriber(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "broker").start()
    cfg = load(write_config(tmp_path, base_config(tmp_path, broker.port, agent={"health_interval_s": 60},
                                                  probes__system={"enabled": False})))
    d = Daemon(cfg, str(tmp_path / "agent.toml"))
    d.start()
    sock = cfg.control.socket
    try:
        fast = connect(sock)
        fast.sendall(b'{"cmd":"tail","name":"display.*","types":["event"]}\n')
        lines = Lines(fast)
        assert lines.read()["stream"] == "tail"
        slow = connect(sock)  # subscribes, then never reads
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.sendall(b'{"cmd":"tail"}\n')
        time.sleep(0.2)

        d.pipeline.intake(d.rec.event("display.test_mark", {"fb": 0}))
        d.pipeline.intake(d.rec.metric("display.fps", 0))
        got = lines.read()["record"]
        assert got["name"] == "display.test_mark" and got["fields"] == {"fb": 0}

        t0 = time.monotonic()
        for i in range(30_000):
            d.pipeline.intake(d.rec.event("flood.event", {"i": i, "pad": "x" * 100}))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            st = request(sock, {"cmd": "status"})["status"]
            if st["control"]["tail_dropped"] > 0 and st["counters"].get("accepted", 0) >= 30_002:
                break
            time.sleep(0.2)
        assert st["control"]["tail_dropped"] > 0, st["control"]
        assert st["healthy"] and time.monotonic() - t0 < 15
        ev = request(sock, {"cmd": "events", "name": "display.*"})
        assert [e["name"] for e in ev["events"]] == ["display.test_mark"]  # events only, no metric
        assert request(sock, {"cmd": "events", "name": "flood.*", "limit": 5000})["more"] is True
        for c in (fast, slow):
            c.close()
    finally:
        d.stop()
        broker.kill()
    assert not Path(sock).exists()
    rows, _, _ = history.query_file(cfg.history.path, history.Query(names=("display.*",)))
    assert json.loads(json.dumps(rows))[0]["fields"] == {"fb": 0}


def test_corrupt_history_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / "h.db").write_bytes(b"this is not a database" * 300)
    h = history.History(HistoryConfig(path=str(tmp_path / "h.db")))
    h.open()
    h([rec(Kind.EVENT, "after", time.time())])
    h.close()
    assert [p.name.split("-")[0] for p in tmp_path.glob("h.db.corrupt-*")] == ["h.db.corrupt"]
    assert history.query_file(tmp_path / "h.db", history.Query())[0][0]["name"] == "after"
