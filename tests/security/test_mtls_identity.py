"""Per-vehicle identity end to end, against a real mosquitto over mutual TLS with the ACL and CRL that
docs/security.md documents, certificates minted by tools/pki:

- vehicle A's agent delivers (the ingest, itself on a client certificate, stores A's batches and its birth);
- a client holding A's certificate cannot publish on B's topics: the broker answers PUBACK 0x87 (not
  authorised) and drops it, and the ingest stores nothing for B;
- a revoked and an expired certificate are refused, and the agent says which in its log and `icvq status`.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from agentproc import REPO, AgentProc, base_config, write_config
from broker import Mosquitto, free_port
from ingest_helper import Ingest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent import tls, wire
from agent.config import TlsConfig
from agent.fieldcli.client import Client
from agent.records import Kind, Record
from tools.pki import Pki

ACL = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text() \
    .split("# /etc/mosquitto/icvq/acl\n")[1].split("```")[0]  # the documented ACL, verbatim


@dataclass
class Rig:
    pki: Pki
    broker: Mosquitto
    port: int


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("mtls")
    pki = Pki(tmp / "pki").init()
    broker_cert = pki.server("broker", dns=("localhost",), ips=("127.0.0.1",))
    for cn in ("VIN-A", "VIN-B", "icvq-ingest", "icvq-campaigns", "VIN-C"):
        pki.client(cn)
    pki.client("VIN-D", expired=True)
    pki.revoke("VIN-C")
    (tmp / "acl").write_text(ACL)
    port = free_port()
    conf = (f"per_listener_settings false\nset_tcp_nodelay true\nlistener {port} 127.0.0.1\ncafile {pki.ca_cert}\n"
            f"certfile {broker_cert.cert}\nkeyfile {broker_cert.key}\ncrlfile {pki.crl}\n"
            "require_certificate true\nuse_identity_as_username true\ntls_version tlsv1.2\n"
            f"acl_file {tmp / 'acl'}\n")
    b = Mosquitto(tmp / "broker", port=port, extra_conf=conf).start()
    try:
        yield Rig(pki, b, port)
    finally:
        b.kill()


def agent_for(tmp: Path, rig: Rig, name: str, vehicle: str) -> AgentProc:
    d = rig.pki.dir
    cfg = base_config(tmp, rig.port, vehicle={"id": vehicle},
                      uplink={"host": "localhost", "backoff_min_s": 0.5, "backoff_max_s": 2.0,
                              "reconnect_probe_s": 1.0},
                      uplink__tls={"ca": str(d / "ca.crt"), "cert": str(d / f"{name}.crt"),
                                   "key": str(d / f"{name}.key")})
    return AgentProc(write_config(tmp, cfg), tmp / "agent.log").start()


def ingest_for(tmp: Path, rig: Rig) -> Ingest:
    d = rig.pki.dir
    ctx = tls.client_context(TlsConfig(ca=str(d / "ca.crt"), cert=str(d / "icvq-ingest.crt"),
                                       key=str(d / "icvq-ingest.key")))
    return Ingest(tmp / "ingest.db", rig.port, tls_context=ctx).start()


def status_of(tmp: Path) -> dict[str, Any]:
    with Client(str(tmp / "control.sock")) as c:
        return c.request({"cmd": "status"})["status"]


def batch_for(vehicle: str, sid: int) -> bytes:
    boot = secrets.token_hex(16)
    rec = Record(Kind.EVENT, "test.marker", int(time.time() * 1000), 1000, boot, True, {"who": vehicle})
    return wire.encode_batch(wire.BatchId(vehicle, "hu", sid, boot, 1), [rec])


def client_as(rig: Rig, name: str) -> mqtt.Client:
    d = rig.pki.dir
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"rogue-{secrets.token_hex(4)}",
                    protocol=MQTTProtocolVersion.MQTTv5)
    c.tls_set_context(tls.client_context(TlsConfig(ca=str(d / "ca.crt"), cert=str(d / f"{name}.crt"),
                                                    key=str(d / f"{name}.key"))))
    return c


def publish_as(rig: Rig, name: str, topic: str, payload: bytes) -> int:
    """Publish once (QoS 1) with `name`'s certificate; returns the PUBACK reason code."""
    done = threading.Event()
    got: list[int] = []
    c = client_as(rig, name)
    c.on_publish = lambda _c, _u, _mid, rc, _p: (got.append(rc.value), done.set())
    c.connect("localhost", rig.port)
    c.loop_start()
    try:
        c.publish(topic, payload, qos=1).wait_for_publish(10)
        assert done.wait(10), "no PUBACK"
    finally:
        c.disconnect()
        c.loop_stop()
    return got[0]


def subscribe_as(rig: Rig, name: str, topic: str) -> int:
    """Subscribe (QoS 1) with `name`'s certificate; returns the SUBACK reason code (1 = granted QoS 1)."""
    done = threading.Event()
    got: list[int] = []
    c = client_as(rig, name)
    c.on_subscribe = lambda _c, _u, _mid, rcs, _p: (got.append(rcs[0].value), done.set())
    c.connect("localhost", rig.port)
    c.loop_start()
    try:
        c.subscribe(topic, qos=1)
        assert done.wait(10), "no SUBACK"
    finally:
        c.disconnect()
        c.loop_stop()
    return got[0]


def test_vehicle_delivers_and_cannot_write_as_another(tmp_path: Path, rig: Rig) -> None:
    (tmp_path / "ingest").mkdir()
    (tmp_path / "a").mkdir()
    ingest = ingest_for(tmp_path / "ingest", rig)
    agent = agent_for(tmp_path / "a", rig, "VIN-A", "VIN-A")
    try:
        ingest.wait_for("SELECT count(*) FROM batches WHERE vehicle = 'VIN-A'", lambda r: r[0][0] >= 1, 30)
        births = ingest.wait_for("SELECT fields FROM status WHERE vehicle = 'VIN-A' AND kind = 'birth'",
                                 lambda r: len(r) >= 1, 10)
        assert json.loads(births[0][0])["transport"] == "tls"
        st = status_of(tmp_path / "a")["uplink"]
        assert st["connected"] and st["transport"] == "tls" and st["last_connect_error"] is None
        assert st["client_cert_not_after"] > time.time() + 800 * 86400  # tools/pki's 825 days

        # A's key, B's topics: the broker refuses (0x87) and drops; a well-formed B batch would be stored.
        assert publish_as(rig, "VIN-A", "icvq/v1/test/VIN-B/hu/batch", batch_for("VIN-B", 77)) == 0x87
        assert publish_as(rig, "VIN-A", "icvq/v1/test/VIN-B/hu/status",
                          wire.encode_status("birth", "VIN-B", "hu", secrets.token_hex(16), 0)) == 0x87
        # Then a marker on A's own topic through the same path: once it is stored, B's would have been too.
        assert publish_as(rig, "VIN-A", "icvq/v1/test/VIN-A/hu/batch", batch_for("VIN-A", 78)) in (0, 0x10)
        ingest.wait_for("SELECT count(*) FROM batches WHERE vehicle = 'VIN-A' AND sid = 78",
                        lambda r: r[0][0] == 1, 20)
        for table in ("batches", "status", "records"):
            assert ingest.query(f"SELECT count(*) FROM {table} WHERE vehicle = 'VIN-B'") == [(0,)]
        assert ingest.query("SELECT count(*) FROM dead_letter") == [(0,)]

        # The backend's campaign publisher, on its own certificate, reaches A through the ACL (docs/blackbox.md).
        doc = tmp_path / "campaign.json"
        doc.write_text(json.dumps({"id": "mtls-check", "trigger": {"family": "link"}, "pre_s": 2, "post_s": 1,
                                   "end": time.time() + 3600}))
        d = rig.pki.dir
        r = subprocess.run([sys.executable, "-m", "tools.ingest", "campaign", "--host", "localhost", "--port",
                            str(rig.port), "--tls-ca", str(d / "ca.crt"), "--tls-cert", str(d / "icvq-campaigns.crt"),
                            "--tls-key", str(d / "icvq-campaigns.key"), "--fleet", "test", "publish", str(doc),
                            "--vehicle", "VIN-A"], capture_output=True, text=True, cwd=REPO, timeout=60)
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 20
        while not [c for c in status_of(tmp_path / "a")["blackbox"]["campaigns"] if c["id"] == "mtls-check"]:
            assert time.monotonic() < deadline, status_of(tmp_path / "a")["blackbox"]
            time.sleep(0.2)
        # The ACL's vehicle patterns reach A's own campaign topic with these ids (device level "_campaigns"):
        # the broker takes them, the agent refuses them, so A's key cannot start a campaign for A.
        for cid in ("campaign", "batch", "status"):
            body = json.dumps({"id": cid, "trigger": {"family": "display"}, "end": time.time() + 600}).encode()
            assert publish_as(rig, "VIN-A", f"icvq/v1/test/VIN-A/_campaigns/{cid}", body) in (0, 0x10)
            agent.wait_log(f"_campaigns/{cid} rejected: id:", 10)
        assert [c["id"] for c in status_of(tmp_path / "a")["blackbox"]["campaigns"]] == ["mtls-check"]
    finally:
        assert agent.stop() == 0
        ingest.stop()


def test_campaign_topics_are_read_only_for_vehicles(rig: Rig) -> None:
    """The black box's campaigns (agent/blackbox/campaigns.py): a vehicle reads its fleet's and its own, reads
    nobody else's, pushes none; only the backend's campaign identity may publish them. (mosquitto grants any
    SUBSCRIBE and applies `read` per delivered message, so what counts is what arrives.)"""
    got: list[str] = []
    last = threading.Event()
    sub = client_as(rig, "VIN-A")
    # Live messages only: retained ones left by the other test (its campaign) are no evidence either way.
    sub.on_message = lambda _c, _u, m: None if m.retain else (got.append(m.topic),
                                                              m.topic.endswith("/last") and last.set())
    subscribed = threading.Event()
    sub.on_subscribe = lambda *_: subscribed.set()
    sub.connect("localhost", rig.port)
    sub.loop_start()
    try:
        sub.subscribe("icvq/v1/test/#", qos=1)
        assert subscribed.wait(10)
        assert publish_as(rig, "icvq-campaigns", "icvq/v1/test/VIN-B/_campaigns/c1", b"{}") in (0, 0x10)
        assert publish_as(rig, "icvq-campaigns", "icvq/v1/test/VIN-A/_campaigns/c2", b"{}") in (0, 0x10)
        assert publish_as(rig, "icvq-campaigns", "icvq/v1/test/_campaigns/last", b"{}") in (0, 0x10)
        assert last.wait(10)  # delivered in publish order: c1 would have come first
    finally:
        sub.disconnect()
        sub.loop_stop()
    assert got == ["icvq/v1/test/VIN-A/_campaigns/c2", "icvq/v1/test/_campaigns/last"]
    assert publish_as(rig, "VIN-A", "icvq/v1/test/VIN-A/hu/campaign", b"{}") in (0, 0x10)  # its acknowledgement
    for topic in ("icvq/v1/test/VIN-B/hu/campaign", "icvq/v1/test/_campaigns/c1",
                  "icvq/v1/test/VIN-A/_campaigns/c1", "icvq/v1/test/VIN-B/_campaigns/c1"):
        assert publish_as(rig, "VIN-A", topic, b"{}") == 0x87, topic
    assert publish_as(rig, "icvq-campaigns", "icvq/v1/test/VIN-B/hu/batch", b"") == 0x87


@pytest.mark.parametrize(("name", "code", "word"), [("VIN-C", "client_cert_revoked", "revoked"),
                                                   ("VIN-D", "client_cert_expired", "expired")])
def test_refused_certificate_is_explained_in_log_and_status(tmp_path: Path, rig: Rig, name: str, code: str,
                                                            word: str) -> None:
    agent = agent_for(tmp_path, rig, name, name)
    try:
        agent.wait_log(f"certificate: it {'is' if word == 'revoked' else 'has'} {word}", 30)
        full = status_of(tmp_path)
        st = full["uplink"]
        assert full["verdict"]["state"] == "failing"
        assert [r["code"] for r in full["verdict"]["reasons"]][:1] == ["certificate_refused"]
        assert not st["connected"]
        assert st["last_connect_error"]["code"] == code and word in st["last_connect_error"]["text"]
        assert word in st["last_error"]
        assert agent.proc is not None and agent.proc.poll() is None  # held, still recording
    finally:
        assert agent.stop() == 0


def test_agent_whose_certificate_names_another_vehicle_says_it_is_refused(tmp_path: Path, rig: Rig) -> None:
    """The likeliest misprovisioning: vehicle.id VIN-B, certificate VIN-A. The broker refuses every batch
    (0x87) and the agent holds them (each dropped after 5 refusals over 10 min); `icvq status` must say failing and
    why, not healthy."""
    agent = agent_for(tmp_path, rig, "VIN-A", "VIN-B")
    try:
        agent.wait_log("broker refuses our batches (reason 0x87)", 30)
        deadline = time.monotonic() + 20
        while True:
            verdict = status_of(tmp_path)["verdict"]
            refused = [r for r in verdict["reasons"] if r["code"] == "batches_refused"]
            if refused:
                break
            assert time.monotonic() < deadline, verdict
            time.sleep(0.2)
        assert verdict["state"] == "failing"
        reason = refused[0]
        assert "0x87" in reason["text"] and "vehicle id" in reason["text"]
        r = subprocess.run([sys.executable, "-m", "agent.cli", "status", "-c", str(tmp_path / "agent.toml")],
                           capture_output=True, text=True, cwd=REPO, timeout=30)
        assert "FAILING" in r.stdout and "refuses our batches" in r.stdout, r.stdout
    finally:
        assert agent.stop() == 0
