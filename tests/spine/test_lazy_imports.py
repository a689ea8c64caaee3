"""Modules the idle daemon does not import until a rare path needs them (issue 13: idle RSS) are imported by that
path, and it works: each case runs in a fresh interpreter, checks the module is not loaded after the idle path's
imports, runs the rare path, and checks the result and that the module is now loaded. A late import that failed
on a car would otherwise be found only when the rare thing happened there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PRELUDE = """
import json, sys, tempfile
from pathlib import Path
import agent.daemon  # everything the idle daemon imports at start
LAZY = sys.argv[1]
before = LAZY in sys.modules
tmp = Path(tempfile.mkdtemp())
"""

CAMPAIGN = """
NOW = 1_767_225_600.0
DOC = {"id": "radar-w49", "revision": 2, "trigger": {"name": "can.timeout", "kinds": ["begin"]},
       "capture": ["system"], "pre_s": 20, "post_s": 5, "end": NOW + 3600,
       "target": {"fleets": ["test"]}}
from agent.blackbox import campaign_store
from agent.blackbox.campaigns import Campaigns
from agent.blackbox.campaign_types import Identity
ME = Identity("test", "VIN0001", "hu", {"agent": "0.1.0"})
def manager():
    return Campaigns(tmp / "campaigns.json", ME, window_s=60, max_campaigns=4, wall=lambda: NOW,
                     on_change=lambda triggers: None)
"""

SPOOL = """
from agent import wire
from agent.records import Kind, Record
from agent.spool import Spool
def rec(i):
    return Record(Kind.METRIC, "test.x", 1_700_000_000_000 + i, 10_000 + i, "ab" * 16, True, float(i))
def bid(boot, seq):
    return wire.BatchId("V", "d", 1, boot, seq)
"""

# The black box as the daemon wires it (default config), for the campaign paths it defers to first need.
PARTS = CAMPAIGN + """
from agent.blackbox.wiring import Parts, campaigns_path
from agent.clock import FakeClock
from agent.config import load
from tools.bench.peer import icvq_conf
cfg = load(icvq_conf(tmp, 1), lean=True)
DOC["target"] = {"fleets": [cfg.vehicle.fleet]}
sent = []
parts = Parts(cfg, FakeClock(wall=NOW), emit=lambda r: None, send=lambda t, b: sent.append(t) or True)
"""

# Campaigns a car stored before a restart: the daemon's start restores them.
RESTORE_AT_START = PARTS + """
campaign_store.save(campaigns_path(cfg), [DOC])
parts.start()
parts.stop()
result = [parts.campaign_ids(), "agent.blackbox.campaigns" in sys.modules]
"""

# A trigger matches (an episode begins): the snapshot is scheduled, its budget saved, then built from the ring.
SNAPSHOT = """
from agent.blackbox.recorder import BlackBox
from agent.blackbox.settings import BlackboxConfig
from agent.clock import FakeClock
from agent.records import RecordFactory
clock, out = FakeClock(), []
box = BlackBox(BlackboxConfig(pre_s=1, post_s=1, window_s=5), clock, out.append, budget_path=tmp / "budget.json")
box.step()
box.observe([RecordFactory(clock).begin("display.freeze", {"cause": "hmi_stopped"})])
clock.advance(2.0)
box.step()
result = [[r.name for r in out], out[0].data["trigger"], (tmp / "budget.json").exists()]
"""

CASES = {
    # The spool cannot be opened (a directory in its way): degraded, then the retry finds the disk back.
    "spool-cannot-open": ("agent.spool_trouble", SPOOL + """
(tmp / "spool.db").mkdir()
sp = Spool(tmp / "spool.db", 1 << 20)
how = sp.open()
state = sp.trouble.state
(tmp / "spool.db").rmdir()
back = sp.retry_disk()
sp.put([rec(i) for i in range(3)])
result = [how, state, back, sp.degraded, sp.n_records]
sp.close()
"""),
    # The spool at its cap: the oldest records are evicted, counted.
    "spool-eviction": ("agent.spool_trouble", SPOOL + """
sp = Spool(tmp / "spool.db", 256 * 1024)
sp.open()
for k in range(4):
    sp.put([rec(1000 * k + i) for i in range(1000)])
result = [sp.drops.get("spool_full.metric", 0) > 0, sp.bytes <= sp.cap_bytes, sp.degraded]
sp.close()
"""),
    # A corrupt spool file at start: moved aside, what it held counted.
    "spool-corrupt": ("agent.spool_trouble", SPOOL + """
import os
(tmp / "spool.db").write_bytes(b"SQLite format 3\\x00" + os.urandom(64 * 1024))
sp = Spool(tmp / "spool.db", 1 << 20)
how = sp.open()
result = [how, sp.recovered_from_corruption, sp.drops.get("spool_corrupt.estimated", 0) > 0]
sp.close()
"""),
    # Records held in memory while the spool cannot be written, sealed and acknowledged from there.
    "spool-memory": ("agent.spool_memory", SPOOL + """
(tmp / "spool.db").mkdir()
sp = Spool(tmp / "spool.db", 1 << 20)
how = sp.open()
sp.put([rec(i) for i in range(5)])
held = sp.memory_records
b = sp.seal(bid, 64 * 1024)
result = [how, held, b.seq < 0, b.n_records, sp.ack([b.seq]), sp.memory_records]
"""),
    # A stop that can write nothing leaves the drop ledger; the next start reports it and removes it.
    "spool-ledger": ("agent.spool_ledger", SPOOL + """
(tmp / "bad").mkdir()
(tmp / "bad" / "spool.db").mkdir()
sp = Spool(tmp / "bad" / "spool.db", 1 << 20, ledger_path=tmp / "ledger.json")
sp.open()
sp.put([rec(i) for i in range(4)])
sp.close()
left = (tmp / "ledger.json").exists()
sp2 = Spool(tmp / "spool.db", 1 << 20, ledger_path=tmp / "ledger.json")
sp2.open()
result = [left, sp2.drops.get("stop_unpersisted.metric"), (tmp / "ledger.json").exists()]
sp2.close()
"""),
    # The first campaign message of a car that had none: the manager is built then.
    "campaign-first-message": ("agent.blackbox.campaigns", PARTS + """
hooks = parts.uplink_hooks()
hooks["inbox"](hooks["subscriptions"][0].replace("+", "radar-w49"), json.dumps(DOC).encode())
result = [parts.campaign_ids(), len(sent), "agent.blackbox.campaign_types" in sys.modules]
"""),
    "campaign-restore-at-start": ("agent.blackbox.campaign_store", RESTORE_AT_START),
    "campaign-restore-at-start-identity": ("agent.blackbox.campaign_types", RESTORE_AT_START),
    "snapshot-taken": ("agent.blackbox.snapshot", SNAPSHOT),
    "snapshot-columns": ("agent.blackbox.columns", SNAPSHOT),
    # A budget file left by an earlier run (a snapshot was taken): read at start.
    "snapshot-budget-restored": ("agent.blackbox.budget_store", """
from agent.blackbox.recorder import BlackBox
from agent.blackbox.settings import BlackboxConfig
from agent.clock import FakeClock
clock = FakeClock()
(tmp / "budget.json").write_text(json.dumps({"v": 1, "boot": clock.boot_id, "taken": [], "last": {},
                                             "counts": {"campaign:c": 2}}))
box = BlackBox(BlackboxConfig(), clock, lambda r: None, budget_path=tmp / "budget.json")
result = [dict(box.limiter.taken)]
"""),
    # A campaign arrives over MQTT.
    "campaign-message": ("agent.blackbox.campaign", CAMPAIGN + """
m = manager()
m.on_message("icvq/v1/test/_campaigns/radar-w49", json.dumps(DOC).encode())
result = [a["id"] for a in m.active()]
"""),
    # Campaigns stored by an earlier run are restored at start.
    "campaign-restore": ("agent.blackbox.campaign", CAMPAIGN + """
campaign_store.save(tmp / "campaigns.json", [DOC])
m = manager()
m.restore()
result = [a["id"] for a in m.active()]
"""),
    # `icvq status` while the agent is down lists the stored campaigns.
    "campaign-stored-status": ("agent.blackbox.campaign", CAMPAIGN + """
from types import SimpleNamespace
from agent.blackbox.wiring import stored_status
campaign_store.save(tmp / "campaigns.json", [DOC])
bc = SimpleNamespace(enabled=True, campaigns=True, max_campaigns=4, campaigns_path=str(tmp / "campaigns.json"),
                     window_s=60)
result = [a["id"] for a in stored_status(SimpleNamespace(blackbox=bc), NOW)["campaigns"]]
"""),
    # `icvq ping` (any request) on the control socket.
    "control-request": ("agent.control_session", """
import socket
from types import SimpleNamespace
from agent.control import ControlServer
view = SimpleNamespace(cfg=SimpleNamespace(control=SimpleNamespace(socket=str(tmp / "control.sock"), group="")))
srv = ControlServer(view, None)
srv.start()
try:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(10)
        c.connect(str(tmp / "control.sock"))
        c.sendall(b'{"cmd": "ping", "id": 7}\\n')
        reply = json.loads(c.makefile("rb").readline())
finally:
    srv.stop()
result = [reply["ok"], reply["id"]]
"""),
    # A batch decoded: the agent's only case is one the broker refused as too large (the spool unseals it).
    "wire-decode": ("agent.wire_decode", """
from agent import wire
from agent.records import Kind, Record
boot = "ab" * 16
payload = wire.encode_batch(wire.BatchId("V", "hu", 1, boot, 3),
                            [Record(Kind.EVENT, "e.x", 1_700_000_000_000, 5000, boot, True, {"a": 1})],
                            compress="always")
batch = wire.decode(payload)
assert isinstance(batch, wire.Batch)
result = [batch.id.seq, [r.name for r in batch.records], wire.to_json(batch)["kind"]]
"""),
    # An uplink with TLS: its context, built at every connect.
    "tls-context": ("agent.tls_context", """
from agent import tls
from agent.config import TlsConfig
ctx = tls.client_context(TlsConfig(min_version="1.3"))
why = tls.classify("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
result = [ctx.minimum_version.name, why.code if why else None]
"""),
    # The client certificate's expiry, read at start and at every TLS connect.
    "tls-cert-expiry": ("agent.tls_context", """
from agent import tls
from agent.config import TlsConfig
(tmp / "client.pem").write_text("not a certificate")
result = [tls.client_cert_not_after(TlsConfig(cert=str(tmp / "client.pem"), key=str(tmp / "client.key")))]
"""),
    # `icvq events`: the local history read back (the status's summary and the offline reader use the same code).
    "history-query": ("agent.history_query", """
import time
from agent import history
from agent.config import HistoryConfig
from agent.records import Kind, Record
h = history.History(HistoryConfig(path=str(tmp / "h.db"), max_days=1))
h.open()
h([Record(Kind.EVENT, "e.x", int(time.time() * 1000), 0, "boot", True, {"a": 1})])
rows, more, _ = history.query_file(tmp / "h.db", history.Query(names=("e.*",)))
db, _ = history.open_ro(tmp / "h.db")
n = history.summary(db)["events"]
db.close()
h.close()
result = [[r["name"] for r in rows], more, n]
"""),
}
EXPECTED = {
    "spool-cannot-open": ["unknown", "unopenable", True, False, 3],
    "spool-eviction": [True, True, False],
    "spool-corrupt": ["unclean", True, True],
    "spool-memory": ["unknown", 5, True, 5, 1, 0],
    "spool-ledger": [True, 4, False],
    "campaign-first-message": [["radar-w49"], 1, True],
    "campaign-restore-at-start": [["radar-w49"], True],
    "campaign-restore-at-start-identity": [["radar-w49"], True],
    "snapshot-taken": [["blackbox.snapshot"], "display.freeze", True],
    "snapshot-columns": [["blackbox.snapshot"], "display.freeze", True],
    "snapshot-budget-restored": [{"campaign:c": 2}],
    "history-query": [["e.x"], False, 1],
    "tls-context": ["TLSv1_3", "broker_cert_untrusted"],
    "tls-cert-expiry": [None],
    "wire-decode": [3, ["e.x"], "batch"],
    "control-request": [True, 7],
    "campaign-message": ["radar-w49"],
    "campaign-restore": ["radar-w49"],
    "campaign-stored-status": ["radar-w49"],
}

EPILOGUE = """
print(json.dumps({"before": before, "after": LAZY in sys.modules, "result": result}))
"""

LAZY = sorted({module for module, _ in CASES.values()})

# The real daemon started in-process with the documented default config (a broker that is not there changes
# nothing here), then stopped: none of the lazy modules may be loaded by start-up or its first seconds.
IDLE = """
import json, sys, tempfile, time
from pathlib import Path
from agent.config import load
from agent.daemon import Daemon
from tools.bench.peer import icvq_conf
conf = icvq_conf(Path(tempfile.mkdtemp()), 1)
d = Daemon(load(conf, lean=True), str(conf))
d.start()
time.sleep(1.0)
loaded = sorted(m for m in json.loads(sys.argv[1]) if m in sys.modules)
d.stop()
print(json.dumps(loaded))
"""


def test_idle_daemon_leaves_them_unloaded() -> None:
    out = subprocess.run([sys.executable, "-c", IDLE, json.dumps(LAZY)], cwd=REPO, capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == []


@pytest.mark.parametrize("case", sorted(CASES))
def test_rare_path_imports_its_module(case: str) -> None:
    module, body = CASES[case]
    out = subprocess.run([sys.executable, "-c", PRELUDE + body + EPILOGUE, module], cwd=REPO, capture_output=True,
                         text=True, env={"PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert not res["before"], f"{module} is imported on the idle path"
    assert res["after"], f"{case} did not import {module}: the case does not exercise the lazy path"
    assert res["result"] == EXPECTED[case]
