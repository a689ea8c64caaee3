"""The consumer against a real mosquitto: hostile traffic, broker restarts, shared subscriptions, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import msgpack
from backend_util import BOOT, REPO, batch, publish, publisher, rec
from ingest_helper import Ingest

from agent import wire
from agent.records import Kind


def test_untrusted_traffic_is_dead_lettered_and_the_consumer_lives_on(tmp_path: Path, broker) -> None:
    ing = Ingest(tmp_path / "i.db", broker.port).start()
    assert ing.consumer.connected.wait(10)
    time.sleep(0.3)  # SUBACK
    pub = publisher(broker.port)
    try:
        garbage = [b"", b"\xff\xfe", msgpack.packb({"v": 1, "k": "b", "veh": "/#"}), b"x" * (3 << 20),
                   wire.encode_status("birth", "VIN1", "hu", BOOT, 1)]  # a status on the batch topic
        for g in garbage:
            publish(pub, "icvq/v1/test/VIN1/hu/batch", g)
        publish(pub, "icvq/v1/test/VIN1/hu/status", b"\x00not a status")
        publish(pub, "icvq/v1/test/VIN1/hu/batch", batch(1, [rec(Kind.METRIC, "cpu", 1000.0, 1.0)]))
        ing.wait_for("SELECT COUNT(*) FROM batches", lambda r: r[0][0] == 1)
        dead = ing.wait_for("SELECT reason FROM dead_letter", lambda r: len(r) == len(garbage) + 1)
        assert {r for (r,) in dead} >= {"msgpack", "too_large", "bad_value", "topic_mismatch"}
        assert ing.thread.is_alive()
    finally:
        pub.loop_stop()
        ing.stop()


def test_reconnects_by_itself_after_a_broker_restart(tmp_path: Path, broker) -> None:
    ing = Ingest(tmp_path / "i.db", broker.port).start()
    assert ing.consumer.connected.wait(10)
    time.sleep(0.3)
    pub = publisher(broker.port)
    publish(pub, "icvq/v1/test/VIN1/hu/batch", batch(1, [rec(Kind.METRIC, "cpu", 1000.0, 1.0)]))
    ing.wait_for("SELECT COUNT(*) FROM batches", lambda r: r[0][0] == 1)
    pub.loop_stop()
    broker.kill()
    time.sleep(0.5)
    broker.start()
    try:
        deadline = time.monotonic() + 20
        pub = publisher(broker.port)
        seq = 2
        # A non-persistent broker forgets subscriptions: publish until the consumer is back and subscribed.
        while time.monotonic() < deadline:
            publish(pub, "icvq/v1/test/VIN1/hu/batch", batch(seq, [rec(Kind.METRIC, "cpu", 1000.0 + seq, 1.0)]))
            seq += 1
            if ing.query("SELECT COUNT(*) FROM batches")[0][0] > 1:
                break
            time.sleep(0.3)
        assert ing.query("SELECT COUNT(*) FROM batches")[0][0] > 1
    finally:
        pub.loop_stop()
        ing.stop()


def test_shared_subscription_splits_the_fleet_between_workers(tmp_path: Path, pbroker) -> None:
    db = tmp_path / "i.db"
    a = Ingest(db, pbroker.port, group="g", client_id="w-a").start()
    b = Ingest(db, pbroker.port, group="g", client_id="w-b").start()
    assert a.consumer.connected.wait(10) and b.consumer.connected.wait(10)
    time.sleep(0.3)
    pub = publisher(pbroker.port)
    try:
        publish(pub, "icvq/v1/test/VIN7/hu/status",
                wire.encode_status("birth", "VIN7", "hu", BOOT, 1, {"inventory": {"components": {"hmi": "1"}}}),
                retain=True)
        for i in range(40):
            veh = f"VIN{i % 8}"
            payload = wire.encode_batch(wire.BatchId(veh, "hu", 1, BOOT, i), [rec(Kind.METRIC, "cpu", 1000.0 + i, 1.0)])
            publish(pub, f"icvq/v1/test/{veh}/hu/batch", payload)
        a.wait_for("SELECT COUNT(*) FROM batches", lambda r: r[0][0] == 40)
        assert a.consumer.stored > 0 and b.consumer.stored > 0
        assert a.consumer.stored + b.consumer.stored == 40
        # Status is not shared (retained messages never reach a shared subscription): both get it, stored once.
        a.wait_for("SELECT COUNT(*) FROM software", lambda r: r[0][0] == 1)
        assert a.query("SELECT COUNT(*) FROM status") == [(1,)]
    finally:
        pub.loop_stop()
        a.stop()
        b.stop()


def test_cli_help_and_stats_lines(tmp_path: Path, broker) -> None:
    out = subprocess.run([sys.executable, "-m", "tools.ingest", "--help"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    for word in ("--group", "--db", "postgresql://", "--stats", "report", "predict", "--leave"):
        assert word in out
    for sub in ("report", "predict"):
        assert "--db" in subprocess.run([sys.executable, "-m", "tools.ingest", sub, "--help"], cwd=REPO,
                                        capture_output=True, text=True, check=True).stdout
    proc = subprocess.Popen([sys.executable, "-m", "tools.ingest", "--port", str(broker.port), "--db",
                             str(tmp_path / "i.db"), "--duration", "4", "--stats", "--stats-interval", "1"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    pub = publisher(broker.port)
    publish(pub, "icvq/v1/test/VIN1/hu/batch", batch(1, [rec(Kind.METRIC, "cpu", time.time() - 2, 1.0)]))
    pub.loop_stop()
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert json.loads(stdout.strip().splitlines()[-1])["batches"] == 1
    lines = [ln for ln in stderr.splitlines() if "rec/s" in ln]
    assert len(lines) >= 2 and "lag" in lines[-1] and "queue" in lines[-1]
    assert any("lag p50" in ln for ln in lines)


def test_a_stopped_worker_keeps_its_share_unless_it_leaves(tmp_path: Path, pbroker) -> None:
    """Without --leave the session stays subscribed (a restart finds its share queued); with --leave it ends."""
    acks: list[str] = []
    pub = publisher(pbroker.port)
    pub.on_publish = lambda c, u, mid, rc, props: acks.append(str(rc))
    try:
        for worker, leave in (("7", ["--leave"]), ("8", [])):
            subprocess.run([sys.executable, "-m", "tools.ingest", "run", "--port", str(pbroker.port), "--db",
                            str(tmp_path / "i.db"), "--group", "g", "--worker", worker, "--duration", "1.5", *leave],
                           cwd=REPO, check=True, capture_output=True, timeout=60)
            publish(pub, "icvq/v1/test/VIN1/hu/batch", batch(int(worker), [rec(Kind.METRIC, "cpu", 1000.0, 1.0)]))
            time.sleep(0.2)
    finally:
        pub.loop_stop()
    assert acks == ["No matching subscribers", "Success"]
