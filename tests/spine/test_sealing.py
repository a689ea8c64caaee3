"""Sealing policy (issue 13): events go out at once, samples linger; and the pipeline sleeps on events, not polls.

The rules are tables over agent/pacing.py; one test drives a real Pipeline over a real spool with a stand-in
for the uplink (pure bookkeeping: it only records what was published), one runs the real daemon against a
real mosquitto with a one-hour linger.
"""

from __future__ import annotations

import queue
import time
from pathlib import Path
from typing import Any

import pytest
from agentproc import AgentProc, base_config, write_config
from broker import Mosquitto
from recorder import Recorder

from agent import pacing, wire
from agent.config import from_mapping
from agent.pipeline import Pipeline
from agent.records import Kind, RecordFactory
from agent.spool import Spool
from agent.uplink import Acked, EventQueue, Up

LINGER = 300.0

SEAL = [
    # n, body bytes, urgent, waiting since, now → due at, seal now?
    (0, 0, True, 0.0, 1000.0, None, False),             # nothing waiting
    (5, 400, False, 990.0, 1000.0, 1290.0, False),      # samples within their linger wait
    (5, 400, True, 990.0, 1000.0, 1000.0, True),        # an event waiting seals them all at once
    (5, 400, False, 700.0, 1000.0, 1000.0, True),       # linger over (just)
    (5, 400, False, 600.0, 1000.0, 900.0, True),        # linger long over
    (5, 70_000, False, 999.0, 1000.0, 1000.0, True),    # a batch's worth is waiting
    (5, 400, False, None, 1000.0, 1000.0, True),        # left by the previous run: due at once
]


@pytest.mark.parametrize(("n", "body", "urgent", "since", "now", "at", "due"), SEAL)
def test_seal_at_and_due_table(n: int, body: int, urgent: bool, since: float | None, now: float,
                               at: float | None, due: bool) -> None:
    got = pacing.seal_at(n_unsealed=n, body_bytes=body, max_batch=96 * 1024, urgent=urgent, waiting_since=since,
                         now=now, linger_s=LINGER)
    assert got == at
    assert pacing.seal_due(got, now) is due


SLEEP = [
    ([], pacing.MAX_SLEEP_S),
    ([None, None], pacing.MAX_SLEEP_S),
    ([1003.0, None], 3.0),
    ([1003.0, 1001.5], 1.5),
    ([990.0], 0.0),          # overdue: no sleep
    ([5000.0], pacing.MAX_SLEEP_S),
]


@pytest.mark.parametrize(("due", "expected"), SLEEP)
def test_sleep_until_the_earliest_due_time(due: list[float | None], expected: float) -> None:
    assert pacing.sleep_s(1000.0, due) == expected


class Clock:
    boot_id = "ab" * 16

    def __init__(self) -> None:
        self.t = 1_000.0

    def wall(self) -> float:
        return 1_767_225_600.0 + self.t

    def mono(self) -> float:
        return self.t

    def synced(self) -> bool:
        return True


class RecordingUplink:
    """Stands in for the MQTT side: connected, never acknowledges, remembers every payload."""

    def __init__(self) -> None:
        self.events: queue.Queue[Any] = EventQueue()
        self.connected = True
        self.payloads: list[bytes] = []

    def publish(self, payload: bytes) -> tuple[int, int]:
        self.payloads.append(payload)
        return 1, len(self.payloads)

    def note_ack(self) -> None:
        pass


def connected_pipeline(tmp_path: Path, linger_s: float) -> tuple[Pipeline, Spool, RecordingUplink, RecordFactory]:
    """A real Pipeline over a real spool, its uplink stand-in connected and the Up event seen."""
    cfg = from_mapping({"vehicle": {"id": "V1", "device": "hu", "fleet": "f"},
                        "uplink": {"batch_linger_s": linger_s}, "spool": {"path": str(tmp_path / "s.db")},
                        "agent": {"health_interval_s": 86400.0}})
    spool = Spool(tmp_path / "s.db", 1 << 24)
    spool.open()
    up = RecordingUplink()
    rec = RecordFactory(Clock())  # type: ignore[arg-type]
    pl = Pipeline(cfg, spool, up, rec)  # type: ignore[arg-type]
    up.events.put(Up(1, None))
    pl.step()
    return pl, spool, up, rec


def test_an_event_is_sealed_without_waiting_for_the_metric_linger(tmp_path: Path) -> None:
    pl, spool, up, rec = connected_pipeline(tmp_path, 3600.0)
    for i in range(20):
        pl.intake(rec.metric("system.cpu_pct", float(i)))
    pl.request_flush()                            # commit now (a flush would also seal: undo that below)
    pl.step()
    assert up.payloads and spool.n_records == 0  # a flush seals at once: that is what it is for
    up.payloads.clear()

    for i in range(20):
        pl.intake(rec.metric("system.cpu_pct", float(i)))
    pl._commit()
    pl.step()
    assert up.payloads == [] and spool.n_records == 20, "samples must wait for their linger"
    assert pl._sleep_s() > 0, "and the thread may sleep meanwhile"

    pl.intake(rec.event("display.gpu_hang", {"driver": "etnaviv"}))
    assert pl._sleep_s() == 0.0, "an event wakes the pipeline at once"
    pl.step()
    assert len(up.payloads) == 1 and spool.n_records == 0
    batch = wire.decode(up.payloads[0])
    assert isinstance(batch, wire.Batch)
    kinds = [r.kind for r in batch.records]
    assert kinds.count(Kind.METRIC) == 20 and kinds[-1] is Kind.EVENT  # the samples rode along
    spool.close()


def test_the_wake_up_for_a_linger_finds_the_seal_due(tmp_path: Path) -> None:
    """The thread sleeps until the time sealing is due and, woken then, seals (one rule for both: seal_at)."""
    pl, spool, up, rec = connected_pipeline(tmp_path, 0.3)
    for i in range(5):
        pl.intake(rec.metric("system.cpu_pct", float(i)))
    pl._commit()
    pl.step()
    assert up.payloads == [] and spool.n_records == 5, "samples wait for their linger"
    while (s := pl._sleep_s()) > 0:
        time.sleep(s)
    assert pl._should_seal(), "woken for a seal that is not due yet"
    pl.step()
    assert len(up.payloads) == 1 and spool.n_records == 0
    spool.close()


def test_daemon_sends_events_at_once_while_metrics_linger(tmp_path: Path, broker: Mosquitto) -> None:
    """Real daemon, real broker, linger one hour: the agent.start event arrives (with the samples taken before
    it); afterwards samples keep waiting in the spool, and every batch that left carries an event."""
    cfg = base_config(tmp_path, broker.port, uplink={"host": "127.0.0.1", "port": broker.port,
                                                     "batch_linger_s": 3600.0},
                      agent={"nice": 0, "io_idle": False, "health_interval_s": 3600})
    rec = Recorder(broker.port).start()
    agent = AgentProc(write_config(tmp_path, cfg), tmp_path / "agent.log").start()
    try:
        rec.wait(lambda r: any(x.name == "agent.start" for b in r.batches() for x in b.records))
    finally:
        assert agent.stop() == 0
    rec.stop()
    batches = rec.batches()
    assert batches
    for b in batches:
        assert any(r.kind is not Kind.METRIC and r.kind is not Kind.HEALTH for r in b.records), \
            "a batch of samples alone left before the linger"


class AckingUplink(RecordingUplink):
    """Connected, and the broker acknowledges every publish at once (PUBACK as an Acked event)."""

    reconnects = 0

    def publish(self, payload: bytes) -> tuple[int, int]:
        gen, mid = super().publish(payload)
        self.events.put(Acked(gen, mid, 0))
        return gen, mid


def test_a_clean_stop_sends_the_health_report_that_falls_due_while_draining(tmp_path: Path) -> None:
    """The drain in Pipeline.stop can end a step by queueing the health report that just fell due; a stop that
    asked whether the spool was empty before committing them left those samples behind (make test-arm64:
    'spool empty after stop', 5 records, 1 run in 4)."""
    cfg = from_mapping({"vehicle": {"id": "V1", "device": "hu", "fleet": "f"},
                        "uplink": {"batch_linger_s": 3600.0}, "spool": {"path": str(tmp_path / "s.db")},
                        "agent": {"health_interval_s": 86400.0}})
    spool = Spool(tmp_path / "s.db", 1 << 24)
    spool.open()
    up = AckingUplink()
    pl = Pipeline(cfg, spool, up, RecordFactory(Clock()))  # type: ignore[arg-type]
    up.events.put(Up(1, None))
    pl.step()
    pl.intake(RecordFactory(Clock()).metric("system.cpu_pct", 1.0))  # type: ignore[arg-type]
    pl._commit()
    assert spool.n_records == 1 and not up.payloads                  # lingering: the drain has work to do
    # The report falls due in the drain's second step: after the first one sealed and published the sample (and
    # with that ended the flush), while the second takes the broker's acknowledgement.
    steps, step = [], pl.step

    def counted_step() -> None:
        steps.append(1)
        if len(steps) == 2:
            pl._last_health = time.monotonic() - cfg.agent.health_interval_s
        step()
    pl.step = counted_step  # type: ignore[method-assign]
    pl.stop(drain_s=5.0)
    assert len(steps) >= 2
    assert (spool.n_records, spool.n_batches, spool.memory_records) == (0, 0, 0)
    names = {r.name for p in up.payloads for r in wire.decode(p).records}  # type: ignore[union-attr]
    assert "system.cpu_pct" in names and any(n.startswith("agent.") for n in names), names
    spool.close()
