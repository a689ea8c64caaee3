"""Pseudonymous vehicles end to end: a real agent with a fleet key publishes through a real mosquitto; no topic
or identity carries the VIN; the ingest, given the key and the VIN register, stores the VIN — also for batches
sealed under the VIN before the key was configured (same identity, so they dedup)."""

from __future__ import annotations

import os
from pathlib import Path

from agentproc import AgentProc, base_config, write_config
from ingest_helper import Ingest
from recorder import Recorder

from agent import wire
from agent.clock import SystemClock
from agent.pseudonym import pseudonym
from agent.records import RecordFactory
from agent.spool import Spool
from tools.ingest import rows
from tools.ingest.pseudonyms import Pseudonyms

VIN = "LSVAB4187E2123456"
KEY = b"9c" * 32


def _batch_payload(vehicle: str) -> bytes:
    rec = RecordFactory(SystemClock()).event("agent.stop", {"version": "t"})
    return wire.encode_batch(wire.BatchId(vehicle, "hu", 7, rec.boot, 1), [rec])


def test_decode_compares_and_stores_in_vin_terms() -> None:
    ps = pseudonym(KEY, VIN)
    resolve = Pseudonyms(KEY, [VIN, "OTHERVIN000000001"]).resolve
    topic = f"icvq/v1/test/{ps}/hu/batch"
    for payload_vehicle in (ps, VIN):  # sent under the pseudonym, or sealed under the VIN before the switch
        m = rows.decode(topic, _batch_payload(payload_vehicle), 0.0, resolve=resolve)
        assert isinstance(m.obj, wire.Batch) and m.obj.id.vehicle == VIN, m.reason
    # Another vehicle's identity under this pseudonym's topic is still refused, and so is a VIN payload on a
    # pseudonym topic when the backend has no key.
    assert rows.decode(topic, _batch_payload("OTHERVIN000000001"), 0.0, resolve=resolve).reason == "topic_mismatch"
    assert rows.decode(topic, _batch_payload(VIN), 0.0).reason == "topic_mismatch"
    assert rows.decode(topic, _batch_payload(ps), 0.0).obj is not None  # stored as received, unmapped


def test_agent_sends_pseudonym_and_ingest_maps_it_back(tmp_path: Path, broker) -> None:
    key_file = tmp_path / "fleet.key"
    key_file.write_bytes(KEY + b"\n")
    os.chmod(key_file, 0o600)
    register = tmp_path / "vins.txt"
    register.write_text(f"# fleet register\n{VIN}\nOTHERVIN000000001\n")
    cfg = base_config(tmp_path, broker.port, vehicle={"id": VIN, "pseudonym_key_file": str(key_file)})
    # A batch sealed under the VIN before the key was configured, still waiting in the spool.
    spool = Spool(cfg["spool"]["path"], 1 << 20)
    spool.open()
    rec = RecordFactory(SystemClock())
    spool.put([rec.event("agent.stop", {"version": "before-the-switch"})])
    old = spool.seal(lambda boot, seq: wire.BatchId(VIN, "hu", spool.sid, boot, seq), 1 << 16)
    assert old is not None
    spool.close()

    recorder = Recorder(broker.port).start()
    ing = Ingest(tmp_path / "ingest.db", broker.port,
                 resolve=Pseudonyms.from_files(str(key_file), str(register)).resolve).start()
    agent = AgentProc(write_config(tmp_path, cfg), tmp_path / "agent.log").start()
    ps = pseudonym(KEY, VIN)
    try:
        ing.wait_for("SELECT COUNT(*) FROM records WHERE name = 'system.cpu_pct'", lambda r: r[0][0] >= 2)
        ing.wait_for("SELECT COUNT(*) FROM status WHERE kind = 'birth'", lambda r: r[0][0] >= 1)
        recorder.wait(lambda r: len(r.batches()) >= 2)
    finally:
        assert agent.stop() == 0
        recorder.stop()
        ing.stop()
    with recorder.lock:
        topics = {t for t, _ in recorder.messages}
    assert topics and all(f"/test/{ps}/hu/" in t for t in topics), topics
    assert VIN not in "".join(topics)
    batches = recorder.batches()
    assert {b.id.vehicle for b in batches if b.id.seq != old.seq} == {ps}
    assert [b.id.vehicle for b in batches if b.id.seq == old.seq] == [VIN]  # sealed bytes never change
    assert {s.vehicle for s in recorder.statuses()} == {ps}
    # The backend stored everything under the VIN, the old batch included, and refused nothing.
    assert ing.query("SELECT DISTINCT vehicle FROM batches") == [(VIN,)]
    assert ing.query("SELECT DISTINCT vehicle FROM status") == [(VIN,)]
    assert ing.query("SELECT COUNT(*) FROM batches WHERE seq = ?", old.seq) == [(1,)]
    assert ing.query("SELECT COUNT(*) FROM dead_letter") == [(0,)]
