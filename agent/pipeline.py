"""probes → intake → spool → batches → uplink, driven by one thread so the spool has a single writer.

The intake is a bounded in-memory hand-off; the pipeline commits it to the spool in groups (every
`commit_interval_s`, sooner when an event arrives), seals batches when the uplink has room, publishes them,
and deletes them on PUBACK. Nothing here blocks on the network. When to seal and how long to sleep are
agent/pacing.py's pure rules: events seal at once, samples linger; the thread sleeps until something is due
or something happens (a record, an uplink event, a flush), never on a fixed poll.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from . import pacing, wire
from .config import AgentConfig
from .counters import Counters
from .records import Kind, Record, RecordFactory
from .spool import Spool
from .uplink import Acked, Down, EventQueue, Up, Uplink, UplinkEvent

log = logging.getLogger("icvq.pipeline")

Observer = Callable[[list[Record]], None]
# A batch the broker refuses is dropped (counted `rejected.<code>`) after MAX_REJECTIONS refusals spread over at
# least REJECT_DROP_AFTER_S: between refusals all sending holds 1 s doubling to 60 s, so an ACL or auth hiccup
# of a few minutes (a broker restarting with its ACL file half written) loses nothing; a vehicle the broker
# never accepts drops each batch after ~10 min instead of filling its spool.
MAX_REJECTIONS = 5
REJECT_DROP_AFTER_S = 600.0
NO_MATCHING_SUBSCRIBERS = 0x10
HOLD_MIN_S, HOLD_MAX_S = 1.0, 60.0


class EpisodeTracker:
    """Ongoing episodes, seen from the records that flow past (for `icvq status`)."""

    def __init__(self) -> None:
        self._open: dict[int, Record] = {}
        self._lock = threading.Lock()

    def __call__(self, records: list[Record]) -> None:
        with self._lock:
            for r in records:
                if r.kind is Kind.BEGIN and r.episode is not None:
                    self._open[r.episode] = r
                elif r.kind is Kind.END and r.episode is not None:
                    self._open.pop(r.episode, None)

    def active(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"name": r.name, "episode": r.episode, "since": r.wall_ms / 1000,
                     "fields": dict(r.data) if isinstance(r.data, dict) else {}}
                    for r in self._open.values()]


class Pipeline:
    def __init__(self, cfg: AgentConfig, spool: Spool, uplink: Uplink | None, records: RecordFactory,
                 *, intake_max: int = 50_000) -> None:
        self.cfg = cfg
        self.spool = spool
        self.uplink = uplink
        self.rec = records
        self.counters = Counters()
        self.episodes = EpisodeTracker()
        self.observers: list[Observer] = [self.episodes]
        self.health_sources: list[Callable[[], list[Record]]] = []
        self._intake: deque[Record] = deque()
        self._intake_max = intake_max
        self._intake_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._inflight: dict[int, float] = {}          # seq -> publish time
        self._mids: dict[tuple[int, int], int] = {}    # (generation, mid) -> seq
        self._rejections: dict[int, tuple[int, float]] = {}  # seq → (refusals, monotonic time of the first)
        # The connection generation whose Up event we processed: publishing waits for it, because paho
        # reports "connected" (CONNACK) before our Up event arrives, and that event resets the window.
        self._live_gen: int | None = None
        # PUBACK 0x10 "no matching subscribers": the broker took the batch and threw it away because no
        # backend worker listens (e.g. mosquitto lost the shared subscriptions in a restart). Keep it and
        # hold all sending for a growing while, then resend.
        self._hold_until = 0.0
        self._hold_s = 0.0
        self.no_subscribers_since: float | None = None   # wall clock of the first 0x10 of the current run
        # The broker refusing our batches (PUBACK >= 0x80, e.g. 0x87 not authorized: an ACL or a certificate
        # whose CN is not vehicle.id): (reason code, wall clock of the first refusal since the last success).
        # Refused batches are dropped after MAX_REJECTIONS over REJECT_DROP_AFTER_S, so health calls it failing
        # (agent/health.py).
        self.refusing: tuple[int, float] | None = None
        self._flush_requested = False
        self._intake_since = time.monotonic()  # when the oldest record in the intake arrived
        self._last_health = time.monotonic()
        self._max_batch = cfg.uplink.max_batch_kib * 1024
        self._urgent = False
        # Sealing policy state: an event/episode record is committed and not sealed yet (seal at once), and
        # since when (monotonic) samples have been waiting unsealed. None = unknown, e.g. records left in
        # the spool by the previous run: those are due at once.
        self._event_unsealed = False
        self._waiting_since: float | None = None
        if uplink is not None and isinstance(uplink.events, EventQueue):
            uplink.events.on_put = self._wake.set
        self.alive_mono = time.monotonic()
        self.last_ack_seq: int | None = None

    # ------------------------------------------------------------------------------------ thread-safe
    def intake(self, record: Record) -> None:
        with self._intake_lock:
            if len(self._intake) >= self._intake_max:
                # The pipeline thread is stalled; keep the newest, count what goes.
                self._intake.popleft()
                self.counters.inc("intake_overflow")
            first = not self._intake
            if first:
                self._intake_since = time.monotonic()
            self._intake.append(record)
            if not record.kind.evictable_first:
                self._urgent = True
        # One wake per group of samples (the thread then sleeps until their commit is due), every time for
        # an event: it is committed, sealed and published at once.
        if first or not record.kind.evictable_first:
            self._wake.set()

    def request_flush(self) -> None:
        # Whoever asks (`icvq flush`) has usually just fixed what held the batches (the backend is back, the ACL
        # mended): one try now instead of after the hold (up to 60 s); if it is still refused, the hold resumes.
        self._hold_until = 0.0
        self._flush_requested = True
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="pipeline", daemon=True)
        self._thread.start()

    def stop(self, drain_s: float = 5.0) -> None:
        """Commit what is queued and, if connected, try to get the spool acknowledged within drain_s."""
        self._stop.set()
        self._wake.set()
        if self._thread:
            self._thread.join(10)
        self._commit()
        if self.uplink and self.uplink.connected and drain_s > 0:
            deadline = time.monotonic() + drain_s
            self._flush_requested = True
            while time.monotonic() < deadline:
                # Commit before asking whether anything is left: a step can end by queueing records of its own
                # (the health report falls due), which would otherwise stay behind as unsent samples.
                self._commit()
                if not (self.spool.n_records or self.spool.n_batches or self.spool.memory_records):
                    break
                self.step()
                time.sleep(0.05)
        self._commit()

    # ------------------------------------------------------------------------------------ the loop
    def run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._sleep_s())
            self._wake.clear()
            try:
                self.step()
            except Exception:
                log.exception("pipeline step failed")
                self.counters.inc("step_errors")
                self._stop.wait(1.0)

    def step(self) -> None:
        now = time.monotonic()
        self.alive_mono = now
        acked = self._drain_uplink_events()
        if acked:
            self.spool.ack(acked)
            if self.uplink:
                self.uplink.note_ack()
        if now - self._last_health >= self.cfg.agent.health_interval_s:
            self._last_health = now
            for r in self.health():
                self.intake(r)
        if self._urgent or self._flush_requested or \
                (self._intake and now - self._intake_since >= self.cfg.spool.commit_interval_s):
            self._commit()
        self._send()

    def _sleep_s(self) -> float:
        """Until the earliest due time: commit of a waiting intake, health, a sample's linger, a hold's end."""
        now = time.monotonic()
        due: list[float | None] = [self._last_health + self.cfg.agent.health_interval_s]
        if self._intake:
            due.append(now if self._urgent else self._intake_since + self.cfg.spool.commit_interval_s)
        connected = self.uplink is not None and self.uplink.connected and self._live_gen is not None
        if connected and len(self._inflight) < self.cfg.uplink.max_inflight:
            if self._hold_until > now and (self.spool.n_unsealed or self.spool.n_batches or self.spool.memory_batches):
                due.append(self._hold_until)
            else:
                due.append(self._seal_at(now))
        return pacing.sleep_s(now, due)

    def _commit(self) -> None:
        with self._intake_lock:
            batch = list(self._intake)
            self._intake.clear()
            self._urgent = False
        now = time.monotonic()
        if not batch:
            return
        if not self.spool.n_unsealed:
            self._waiting_since = now
        if any(not r.kind.evictable_first for r in batch):
            self._event_unsealed = True
        self.spool.put(batch)
        self.counters.inc("accepted", len(batch))
        for obs in self.observers:
            try:
                obs(batch)
            except Exception:
                log.exception("record observer failed")
                self.counters.inc("observer_errors")

    def _drain_uplink_events(self) -> list[int]:
        if self.uplink is None:
            return []
        acked: list[int] = []
        while True:
            try:
                ev: UplinkEvent = self.uplink.events.get_nowait()
            except queue.Empty:
                return acked
            if isinstance(ev, Up):
                self._inflight.clear()
                self._mids.clear()
                self._live_gen = ev.gen
                if ev.max_packet:
                    # Room for the fixed header, topic and MQTT 5 properties (< 512 bytes with our topics).
                    self._max_batch = min(self.cfg.uplink.max_batch_kib * 1024, max(256, ev.max_packet - 512))
            elif isinstance(ev, Down):
                self._inflight.clear()
                self._mids.clear()
                if ev.gen == self._live_gen:
                    self._live_gen = None
            elif isinstance(ev, Acked):
                seq = self._mids.pop((ev.gen, ev.mid), None)
                if seq is None:
                    continue
                self._inflight.pop(seq, None)
                if ev.reason_code == NO_MATCHING_SUBSCRIBERS and self.cfg.uplink.retry_no_subscribers:
                    self._no_subscribers()
                elif ev.reason_code < 0x80:
                    self._hold_s = 0.0
                    self.no_subscribers_since = None
                    acked.append(seq)
                    self.last_ack_seq = seq
                    self.refusing = None
                    self._rejections.pop(seq, None)
                else:
                    self._rejected(seq, ev.reason_code)

    def _no_subscribers(self) -> None:
        self.counters.inc("no_subscribers")
        if self._hold_s == 0.0:
            log.warning("broker has no subscriber for our batches (PUBACK 0x10); holding them and retrying")
        if self.no_subscribers_since is None:
            self.no_subscribers_since = time.time()
        self._hold()

    def _hold(self) -> None:
        """Hold all sending for a growing while (1 s doubling to 60 s; a success resets it). Once per round: the
        window's other batches answered in the same round do not double it again."""
        if time.monotonic() < self._hold_until:
            return
        self._hold_s = min(HOLD_MAX_S, max(HOLD_MIN_S, self._hold_s * 2))
        self._hold_until = time.monotonic() + self._hold_s

    def _rejected(self, seq: int, code: int) -> None:
        self.counters.inc(f"rejected.{code:#x}")
        if code == 0x95:  # packet too large: the broker's limit is below ours; halve and re-seal smaller
            self._max_batch = max(1024, self._max_batch // 2)
            self.spool.unseal(seq)
            return
        if self.refusing is None or self.refusing[0] != code:
            self.refusing = (code, time.time())
            log.error("broker refuses our batches (reason %#x); holding them and retrying, each dropped after %d "
                      "refusals over %.0f min", code, MAX_REJECTIONS, REJECT_DROP_AFTER_S / 60)
        now = time.monotonic()
        n, first = self._rejections.get(seq, (0, now))
        self._rejections[seq] = (n + 1, first)
        if n + 1 >= MAX_REJECTIONS and now - first >= REJECT_DROP_AFTER_S:
            # Stated policy (docs/wire-format.md "Acknowledgement"): dropped and counted.
            log.error("broker refused batch %d %d times in %.0f s (reason %#x); dropping it", seq, n + 1,
                      now - first, code)
            self.spool.drop_batch(seq, f"rejected.{code:#x}")
            self._rejections.pop(seq, None)
        else:
            self._hold()

    def _send(self) -> None:
        up = self.uplink
        if up is None or not up.connected or self._live_gen is None or time.monotonic() < self._hold_until:
            return
        window = self.cfg.uplink.max_inflight
        for b in self.spool.sealed(exclude=self._inflight, limit=window - len(self._inflight)):
            if not self._publish(b.seq, b.payload):
                return
        while len(self._inflight) < window and self._should_seal():
            new = self.spool.seal(self._batch_id, self._max_batch, compress=self.cfg.uplink.compress)
            if not self.spool.n_unsealed:
                self._event_unsealed = False
                self._waiting_since = time.monotonic()
            if new is None:
                break
            if not self._publish(new.seq, new.payload):
                return
        if self._flush_requested and not self.spool.n_unsealed:
            self._flush_requested = False

    def _publish(self, seq: int, payload: bytes) -> bool:
        assert self.uplink is not None
        res = self.uplink.publish(payload)
        if res is None:
            return False
        if res[0] != self._live_gen:
            # Published on a connection whose Up we have not seen yet: its Up will reset the window and
            # the batch goes out again; counting it in flight now would only send it twice.
            return False
        self._mids[res] = seq
        self._inflight[seq] = time.monotonic()
        self.counters.inc("published")
        return True

    def _should_seal(self) -> bool:
        now = time.monotonic()
        return pacing.seal_due(self._seal_at(now), now)

    def _seal_at(self, now: float) -> float | None:
        """When the next batch is due: what _sleep_s wakes for is what _should_seal then decides on."""
        n, body_bytes = self.spool.unsealed_summary()
        return pacing.seal_at(n_unsealed=n, body_bytes=body_bytes, max_batch=self._max_batch,
                              urgent=self._event_unsealed or self._flush_requested or self._stop.is_set(),
                              waiting_since=self._waiting_since, now=now, linger_s=self.cfg.uplink.batch_linger_s)

    def _batch_id(self, boot: str, seq: int) -> wire.BatchId:
        v = self.cfg.vehicle
        return wire.BatchId(v.id, v.device, self.spool.sid, boot, seq)

    # ------------------------------------------------------------------------------------------ views
    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def health(self) -> list[Record]:
        s = self.spool
        c = self.counters.snapshot()
        up = self.uplink
        trouble = s.trouble
        out = [self.rec.health("agent.spool", {"records": s.n_records, "batches": s.n_batches, "bytes": s.bytes,
                                               "disk_bytes": s.disk_bytes(), "memory_records": s.memory_records,
                                               "degraded": s.degraded,
                                               "trouble": trouble.state if trouble else None,
                                               "trouble_since": trouble.since if trouble else None}),
               self.rec.health("agent.uplink", {"connected": bool(up and up.connected),
                                                "reconnects": up.reconnects if up else 0,
                                                "published": c.get("published", 0),
                                                "intake_overflow": c.get("intake_overflow", 0)})]
        if s.drops:
            out.append(self.rec.health("agent.drops", dict(s.drops)))
        for src in self.health_sources:
            out.extend(src())
        return out

    def status(self) -> dict[str, Any]:
        up = self.uplink
        return {"spool": self.spool.stats(), "inflight": len(self._inflight),
                "max_batch_bytes": self._max_batch, "counters": self.counters.snapshot(),
                "last_ack_seq": self.last_ack_seq,
                "uplink": {"connected": bool(up and up.connected), "broker": f"{self.cfg.uplink.host}:"
                           f"{self.cfg.uplink.port}", "protocol": up.protocol if up else None,
                           "connected_since": up.connected_since if up else None,
                           "last_ack_wall": up.last_ack_wall if up else None,
                           "last_error": up.last_error if up else "", "reconnects": up.reconnects if up else 0,
                           "transport": up.transport if up else "",
                           "last_connect_error": up.last_connect_error if up else None,
                           "client_cert_not_after": up.client_cert_not_after if up else None},
                "episodes": self.episodes.active(), "flush_pending": self._flush_requested,
                # How long batches have been held for want of a subscriber, and the back-off before the next try.
                "no_subscribers_since": self.no_subscribers_since,
                "held_for_subscribers_s": round(time.time() - self.no_subscribers_since, 1)
                if self.no_subscribers_since is not None else 0.0,
                "hold_retry_in_s": round(max(0.0, self._hold_until - time.monotonic()), 1)}
