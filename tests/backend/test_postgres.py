"""PostgreSQL store: schema created by the tool, idempotent under redelivery and racing workers, a payload the
database refuses is dead-lettered alone. Runs its own throwaway cluster (never the machine's server)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
from backend_util import BOOT, Worker, msg, publish, publisher, rec

from agent import wire
from agent.records import Kind
from tools.ingest.store_pg import PostgresStore


def fleet_batches(n_vehicles: int, per_vehicle: int) -> list[tuple[str, bytes, int]]:
    out = []
    for v in range(n_vehicles):
        veh = f"PG{v:03d}"
        for seq in range(1, per_vehicle + 1):
            recs = [rec(Kind.METRIC, "cpu", 1000.0 + seq + i / 10, float(i)) for i in range(seq % 5 + 1)]
            if seq == 2:
                recs.append(rec(Kind.BEGIN, "display.freeze", 1003.0, {"app": "hmi"}, 1000 + v))
                recs.append(rec(Kind.END, "display.freeze", 1004.0, {"duration_s": 1.0}, 1000 + v))
            out.append((f"icvq/v1/pg/{veh}/hu/batch",
                        wire.encode_batch(wire.BatchId(veh, "hu", 9, BOOT, seq), recs), len(recs)))
    return out


def test_racing_stores_write_each_batch_once(pg_url: str) -> None:
    batches = fleet_batches(10, 20)
    stores = [PostgresStore(pg_url) for _ in range(3)]
    errors: list[BaseException] = []

    def run(store: PostgresStore, order: int) -> None:
        items = batches[::order] if order > 0 else batches[::-1]
        try:
            for i in range(0, len(items), 7):
                group = [msg(p, t) for t, p, _ in items[i:i + 7]]
                for _ in range(5):  # a deadlock or serialization failure is transient: retry like the consumer
                    try:
                        store.write(group)
                        break
                    except psycopg.OperationalError as e:
                        assert store.is_transient(e)
                        time.sleep(0.05)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(s, o)) for s, o in zip(stores, (1, -1, 1), strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    q = stores[0].query
    assert q("SELECT COUNT(*) FROM batches") == [(len(batches),)]
    assert q("SELECT COUNT(*) FROM records") == [(sum(n for *_, n in batches),)]
    assert q("SELECT COUNT(*), COUNT(t_end) FROM episodes") == [(10, 10)]
    assert q("SELECT SUM(n_records) FROM boots")[0][0] == sum(n for *_, n in batches)
    for s in stores:
        s.close()


def test_workers_on_postgres_store_exactly_once_and_dead_letter_alone(tmp_path: Path, pbroker, pg_url: str,
                                                                     workers: list[Worker]) -> None:
    for i in (1, 2):
        workers.append(Worker(pbroker.port, pg_url, tmp_path / f"w{i}.log", "--group", "pg", "--worker", str(i),
                              "--max-group", "50").start())
    deadline = time.monotonic() + 20
    while pbroker.log.read_text(errors="replace").count("as icvq-ingest-pg") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    batches = fleet_batches(20, 10)
    pub = publisher(pbroker.port)
    try:
        publish(pub, "icvq/v1/pg/PG000/hu/status", wire.encode_status(
            "birth", "PG000", "hu", BOOT, 1, {"agent": "0.1.0", "inventory": {"components": {"hmi": "3.2.1"}}}),
            retain=True)
        for t, p, _ in batches + batches[::3]:  # a third of them redelivered
            publish(pub, t, p)
        # PostgreSQL text cannot hold NUL: valid on the wire, refused by the database -> dead letter, alone.
        publish(pub, "icvq/v1/pg/PG000/hu/batch",
                wire.encode_batch(wire.BatchId("PG000", "hu", 9, BOOT, 99), [rec(Kind.METRIC, "bad\0name", 1000.0, 1)]))
        publish(pub, "icvq/v1/pg/PG000/hu/batch", b"\x93not msgpack")
    finally:
        pub.loop_stop()
    conn = psycopg.connect(pg_url, autocommit=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        n = conn.execute("SELECT COUNT(*) FROM batches").fetchone()
        d = conn.execute("SELECT COUNT(*) FROM dead_letter").fetchone()
        if n and d and n[0] >= len(batches) and d[0] >= 2:
            break
        time.sleep(0.3)
    for w in workers:
        assert w.stop() == 0
    assert conn.execute("SELECT COUNT(*) FROM batches").fetchone() == (len(batches),)
    assert conn.execute("SELECT COUNT(*) FROM records").fetchone() == (sum(n for *_, n in batches),)
    reasons = {r for (r,) in conn.execute("SELECT reason FROM dead_letter")}
    assert reasons == {"store_rejected", "msgpack"}
    assert sorted(conn.execute("SELECT component, version FROM software").fetchall()) == [("agent", "0.1.0"),
                                                                                         ("hmi", "3.2.1")]
    conn.close()


def test_database_outage_holds_messages_unacknowledged_until_it_is_back(tmp_path: Path, pbroker,
                                                                        workers: list[Worker]) -> None:
    from tools.ingest.pgtemp import TempPostgres

    pg = TempPostgres(fsync=False).start()
    try:
        workers.append(Worker(pbroker.port, pg.url, tmp_path / "w.log", "--group", "out", "--worker", "1").start())
        deadline = time.monotonic() + 20
        while "as icvq-ingest-out" not in pbroker.log.read_text(errors="replace") and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)
        batches = fleet_batches(4, 10)
        pub = publisher(pbroker.port)
        for t, p, _ in batches[:20]:
            publish(pub, t, p)
        conn = psycopg.connect(pg.url, autocommit=True)
        deadline = time.monotonic() + 20
        while conn.execute("SELECT COUNT(*) FROM batches").fetchone() != (20,) and time.monotonic() < deadline:
            time.sleep(0.2)
        conn.close()
        pg.pause()                     # the database goes away; the broker keeps redelivering to the worker
        for t, p, _ in batches[20:]:
            publish(pub, t, p)
        time.sleep(2.0)
        pg.resume()
        pub.loop_stop()
        conn = psycopg.connect(pg.url, autocommit=True)
        deadline = time.monotonic() + 30
        while conn.execute("SELECT COUNT(*) FROM batches").fetchone() != (40,) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert conn.execute("SELECT COUNT(*) FROM batches").fetchone() == (40,)
        assert conn.execute("SELECT COUNT(*) FROM records").fetchone() == (sum(n for *_, n in batches),)
        conn.close()
        assert workers[0].stop() == 0
        assert "store unavailable" in (tmp_path / "w.log").read_text()
    finally:
        pg.stop()
