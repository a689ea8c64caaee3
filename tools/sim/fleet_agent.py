"""Simulated cars that publish through the agent's own code: per car a real Spool, Pipeline and Uplink.

Why this shape (1,000 cars on 2 cores): every car keeps what makes it a car on the wire — its own spool
(identities, sequence numbers, resends after outages are the agent's), its own MQTT connection with its own
will and retained birth/death — but not its own pipeline thread. One driver thread per process feeds the
records and calls `Pipeline.step()` for each car in turn; that is the same code the pipeline thread runs, so
nothing is re-implemented. What remains per car while it drives is the Uplink's connect thread and paho's
network thread: two mostly sleeping threads, about 500 threads in a process of 250 cars, which Linux and
CPython handle. Cars are spread over processes of at most 250 (CARS_PER_PROCESS): paho's network loop uses
select(), which cannot watch descriptors above 1024, and every car holds three (its socket and paho's wake-up
socket pair). For the same reason the spools are SQLite in memory: the agent's Spool code, without the three
file descriptors each (database, WAL, shm) — the simulation tests the protocol, not the flash.

Time is compressed (`speed` simulated seconds per real second); records carry simulated wall and monotonic
time, which always lies in the past, so the pipeline seals whatever waits at each step.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent import wire
from agent.config import AgentConfig, VehicleConfig, from_mapping
from agent.pipeline import Pipeline
from agent.records import RecordFactory
from agent.spool import SealedBatch, Spool
from agent.uplink import Uplink

from .fleet_model import Car, Drive, Mix, birth_fields

log = logging.getLogger("icvq.sim.fleet")

CARS_PER_PROCESS = 250


class SimClock:
    """The agent's Clock protocol, driven by the simulation."""

    def __init__(self) -> None:
        self.boot_id = "0" * 32
        self._wall = 0.0
        self._mono = 0.0

    def set(self, boot: str, wall: float, mono: float) -> None:
        self.boot_id, self._wall, self._mono = boot, wall, mono

    def wall(self) -> float:
        return self._wall

    def mono(self) -> float:
        return self._mono

    def synced(self) -> bool:
        return True


class RecordingSpool(Spool):
    """The agent's spool, noting every batch identity it seals (what the fleet published, for the tests)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.sealed_ids: dict[int, wire.BatchId] = {}
        self.dropped: list[wire.BatchId] = []

    def seal(self, make_id: Callable[[str, int], wire.BatchId], max_bytes: int, *, max_records: int = 5000,
             compress: str = "auto") -> SealedBatch | None:
        ids: dict[int, wire.BatchId] = {}

        def note(boot: str, seq: int) -> wire.BatchId:
            ids[seq] = make_id(boot, seq)
            return ids[seq]

        out = super().seal(note, max_bytes, max_records=max_records, compress=compress)
        if out is not None:
            self.sealed_ids[out.seq] = ids[out.seq]
        return out

    def unseal(self, seq: int) -> None:
        self.sealed_ids.pop(seq, None)  # never accepted by the broker; its records get a new batch
        super().unseal(seq)

    def drop_batch(self, seq: int, reason: str) -> None:
        bid = self.sealed_ids.pop(seq, None)
        if bid is not None:
            self.dropped.append(bid)
        super().drop_batch(seq, reason)


def agent_config(host: str, port: int, topic_prefix: str, allow_plaintext: bool = False) -> AgentConfig:
    return from_mapping({
        "vehicle": {"id": "SIM", "device": "hu", "fleet": "sim"},
        "uplink": {"host": host, "port": port, "topic_prefix": topic_prefix, "keepalive_s": 10,
                   "allow_plaintext": allow_plaintext,
                   "batch_linger_s": 1.0, "backoff_min_s": 1.0, "backoff_max_s": 4.0, "reconnect_probe_s": 1.0,
                   "connect_timeout_s": 5.0},
        "spool": {"path": "/nonexistent", "commit_interval_s": 0.2},
        "agent": {"health_interval_s": 3600.0},
    })


class AgentCar:
    def __init__(self, car: Car, template: AgentConfig, step_interval_s: float) -> None:
        self.car = car
        self.cfg = replace(template, vehicle=VehicleConfig(car.vehicle, car.device, car.fleet),
                           spool=replace(template.spool, path=":memory:"))
        self.spool = RecordingSpool(":memory:", 64 << 20)
        self.spool.open()
        self.clock = SimClock()
        self.step_interval_s = step_interval_s
        self._drives: Iterator[Drive] = car.drives()
        self.next: Drive | None = next(self._drives, None)
        self.drive: Drive | None = None
        self.boot: Drive | None = None
        self.pos = 0
        self.uplink: Uplink | None = None
        self.pipeline: Pipeline | None = None
        self.ending_until: float | None = None
        self.last_step = 0.0
        self.sessions = 0

    # ------------------------------------------------------------------------------------ sessions
    def _open(self, d: Drive, sim_t: float) -> None:
        self.boot = d
        self.clock.set(d.boot, sim_t, d.mono0 + (sim_t - d.t_start))
        self.uplink = Uplink(self.cfg.uplink, self.cfg.vehicle, boot_id=d.boot,
                             birth_fields=lambda: birth_fields(d), wall_ms=lambda: int(self.clock.wall() * 1000))
        self.pipeline = Pipeline(self.cfg, self.spool, self.uplink, RecordFactory(self.clock))
        self.uplink.start()
        self.sessions += 1

    def _close(self) -> None:
        if self.pipeline is not None:
            self.pipeline.stop(drain_s=0)  # commits what is queued; the batches wait in the spool
        if self.uplink is not None:
            self.uplink.stop(timeout_s=1.0)
        self.pipeline = self.uplink = None
        self.ending_until = None

    @property
    def empty(self) -> bool:
        return self.spool.n_records == 0 and self.spool.n_batches == 0

    # ---------------------------------------------------------------------------------- the driver
    def advance(self, sim_t: float, now: float, grace_s: float) -> None:
        d = self.drive
        if d is not None:
            self.clock.set(d.boot, sim_t, d.mono0 + (sim_t - d.t_start))
            recs = d.records
            while self.pos < len(recs) and recs[self.pos].wall_ms <= sim_t * 1000:
                assert self.pipeline is not None
                self.pipeline.intake(recs[self.pos])
                self.pos += 1
            if self.pos >= len(recs) and sim_t >= d.t_start + d.duration_s:
                # Ignition off: the agent gets a few seconds to flush, like `systemctl stop` with drain_s.
                self.drive = None
                self.ending_until = now + grace_s
                assert self.pipeline is not None
                self.pipeline.request_flush()
        if self.pipeline is not None and (now - self.last_step >= self.step_interval_s
                                          or self.ending_until is not None):
            self.last_step = now
            self.pipeline.step()
        # Checked after a step: with a flush requested, step() has moved the intake into the spool.
        if self.ending_until is not None and (self.empty or now >= self.ending_until):
            self._close()
        if self.drive is None and self.pipeline is None and self.next is not None and sim_t >= self.next.t_start:
            self.drive, self.pos = self.next, 0
            self.next = next(self._drives, None)
            self._open(self.drive, sim_t)

    def finish(self, sim_t: float) -> None:
        """End of the simulation: keep (or open) a session in the last boot until the spool is empty."""
        self.next = None
        if self.drive is not None:
            while self.pos < len(self.drive.records):
                assert self.pipeline is not None
                self.pipeline.intake(self.drive.records[self.pos])
                self.pos += 1
            self.drive = None
        if self.pipeline is None and not self.empty and self.boot is not None:
            self._open(self.boot, sim_t)
        if self.pipeline is not None:
            self.pipeline.request_flush()
            self.ending_until = float("inf")

    def drain_step(self) -> bool:
        """One step of the final drain; True when done."""
        if self.pipeline is None:
            return True
        self.pipeline.request_flush()
        self.pipeline.step()  # commits the intake first, so `empty` below is the whole truth
        if self.empty:
            self._close()
            return True
        return False

    def published(self) -> list[wire.BatchId]:
        return list(self.spool.sealed_ids.values())


@dataclass(frozen=True)
class ShardOptions:
    shard: int
    indices: tuple[int, ...]
    seed: int
    days: float
    mix: Mix
    host: str
    port: int
    topic_prefix: str
    speed: float
    t0: float
    metric_interval_s: float
    continuous: bool
    step_interval_s: float
    grace_s: float
    drain_timeout_s: float
    out: str
    allow_plaintext: bool = False


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def shard_main(o: ShardOptions) -> None:
    """One process hosting a share of the fleet; writes its result (JSON) to o.out."""
    logging.basicConfig(level=logging.ERROR, format=f"shard{o.shard} %(levelname)s %(name)s: %(message)s")
    raise_fd_limit()
    template = agent_config(o.host, o.port, o.topic_prefix, o.allow_plaintext)
    cars = [AgentCar(Car(i, o.seed, o.days, o.mix, t0=o.t0, metric_interval_s=o.metric_interval_s,
                         continuous=o.continuous), template, o.step_interval_s) for i in o.indices]
    started = time.monotonic()
    sim_end = o.t0 + o.days * 86400
    try:
        while True:
            now = time.monotonic()
            sim_t = min(o.t0 + (now - started) * o.speed, sim_end)
            for c in cars:
                c.advance(sim_t, now, o.grace_s)
            if sim_t >= sim_end:
                break
            time.sleep(0.05)
        for c in cars:
            c.finish(sim_end)
        deadline = time.monotonic() + o.drain_timeout_s
        pending = list(cars)
        while pending and time.monotonic() < deadline:
            pending = [c for c in pending if not c.drain_step()]
            time.sleep(0.05)
        for c in pending:
            c._close()
        result = {"shard": o.shard, "cars": len(cars), "sessions": sum(c.sessions for c in cars),
                  "seconds": round(time.monotonic() - started, 1),
                  "published": [bid.key() for c in cars for bid in c.published()],
                  "dropped": [bid.key() for c in cars for bid in c.spool.dropped],
                  "left_in_spools": {c.car.vehicle: [c.spool.n_records, c.spool.n_batches]
                                     for c in cars if not c.empty}}
        Path(o.out).write_text(json.dumps(result))
    finally:
        for c in cars:
            c.spool.close()
