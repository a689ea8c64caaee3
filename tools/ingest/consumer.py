"""Subscribe, decode strictly, store, and acknowledge only after the store committed (manual PUBACK).

Batches come through an MQTT v5 shared subscription (`$share/<group>/<prefix>/+/+/+/batch`) so identical
workers split the fleet; status (retained birth/death) through a plain subscription, because a broker never
hands retained messages to a shared one. With a stable client id the worker keeps a persistent session
(clean start off, session expiry): what the broker had sent but we had not acknowledged when a worker died is
sent again when it comes back under the same id, and its share of the traffic waits for it meanwhile.

paho reconnects by itself (loop_start retries the first connection too). Its callbacks only queue messages;
the calling thread decodes, writes one transaction, commits, then acknowledges. An acknowledgement is only
sent on the connection the message came in on: after a reconnect the broker resends what was not acknowledged
(same packet ids only if the session survived), and dedup absorbs the second copy.
"""

from __future__ import annotations

import logging
import queue
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent import wire

from . import rows
from .rows import Message
from .stats import Stats
from .store import Store, WriteResult

log = logging.getLogger("icvq.ingest")


@dataclass(frozen=True)
class Entry:
    gen: int
    mid: int
    qos: int
    msg: Message


class Consumer:
    def __init__(self, store: Store, host: str, port: int, topic_prefix: str = "icvq/v1",
                 group: str | None = None, client_id: str = "", stats: bool = False, *,
                 session_expiry_s: int = 3600, receive_max: int = 256, max_group: int = 1000,
                 limits: wire.Limits = wire.DEFAULT_LIMITS, stats_interval_s: float = 5.0,
                 keepalive_s: int = 30, status: bool = True, name: str = "ingest",
                 leave_on_stop: bool = False, resolve: Callable[[str], str] | None = None,
                 tls_context: ssl.SSLContext | None = None) -> None:
        self.store = store
        self.host, self.port = host, port
        prefix = topic_prefix.rstrip("/")
        batch = f"{prefix}/+/+/+/batch"
        self.batch_filter = f"$share/{group}/{batch}" if group else batch
        self.status_filter = f"{prefix}/+/+/+/status" if status else None
        self.limits = limits
        self.resolve = resolve  # vehicle pseudonym -> VIN (pseudonyms.py), or None to store what arrives
        self.max_group = max_group
        self.keepalive_s = keepalive_s
        self.q: queue.SimpleQueue[Entry] = queue.SimpleQueue()
        self.stop_ev = threading.Event()
        self.connected = threading.Event()
        self.stats = Stats(name)
        self.show_stats = stats
        self.stats_interval_s = stats_interval_s
        self._pending: list[Entry] = []
        self._retry_at = 0.0
        self._backoff = 0.2
        self._store_error = ""
        self._gen = 0
        self._ack_lock = threading.Lock()
        self.persistent = bool(client_id)
        self.leave_on_stop = leave_on_stop
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True)
        # Back quickly after a broker restart: mosquitto (2.0) does not restore shared subscriptions from its
        # persistence, so until we resubscribe the broker answers publishers "no matching subscribers".
        self.client.reconnect_delay_set(0.1, 2)  # type: ignore[arg-type]  # paho takes float delays
        if tls_context is not None:  # the backend's own client certificate (docs/security.md)
            self.client.tls_set_context(tls_context)
        props = Properties(PacketTypes.CONNECT)
        # Receive Maximum bounds what the broker sends before we acknowledge: memory stays bounded without a
        # queue that would block paho's network thread.
        props.ReceiveMaximum = receive_max
        # Larger packets are dropped by the broker; up to this size they arrive and become dead letters.
        props.MaximumPacketSize = max(4 * limits.max_payload, 1 << 16)
        if self.persistent:
            props.SessionExpiryInterval = session_expiry_s
        self._connect_props = props
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # ----------------------------------------------------------------------------- compat counters
    @property
    def stored(self) -> int:
        return self.stats.stored

    @property
    def duplicates(self) -> int:
        return self.stats.duplicates

    @property
    def rejected(self) -> int:
        return self.stats.rejected

    # ------------------------------------------------------------------------------ paho callbacks
    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            log.warning("broker refused connection: %s", rc)
            return
        with self._ack_lock:
            self._gen += 1
        subs = [(self.batch_filter, SubscribeOptions(qos=1))]
        if self.status_filter:
            # retainHandling=1: retained births only when the subscription is new, not on every session resume.
            subs.append((self.status_filter, SubscribeOptions(qos=1, retainHandling=1)))
        c.subscribe(subs)
        self.connected.set()
        log.info("connected to %s:%d (session %s)", self.host, self.port,
                 "resumed" if getattr(flags, "session_present", False) else "new")

    def _on_disconnect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        with self._ack_lock:
            self._gen += 1  # nothing received before this may be acknowledged on a later connection
        if self.connected.is_set() and not self.stop_ev.is_set():
            log.warning("disconnected from broker (%s); paho reconnects", rc)
        self.connected.clear()

    def _on_message(self, c: Any, u: Any, m: mqtt.MQTTMessage) -> None:
        # Cheap on purpose: paho's thread must keep reading the socket.
        self.q.put(Entry(self._gen, m.mid, m.qos, Message(m.topic, bytes(m.payload), time.time())))

    # ---------------------------------------------------------------------------------- main loop
    def run(self, duration_s: float | None = None) -> None:
        self.client.connect_async(self.host, self.port, keepalive=self.keepalive_s,
                                  clean_start=not self.persistent, properties=self._connect_props)
        self.client.loop_start()
        end = time.monotonic() + duration_s if duration_s else None
        last_stats = time.monotonic()
        try:
            while not self.stop_ev.is_set() and (end is None or time.monotonic() < end):
                self.step(0.2)
                if self.show_stats and time.monotonic() - last_stats >= self.stats_interval_s:
                    last_stats = time.monotonic()
                    print(self.stats.line(self.q.qsize(), len(self._pending)), file=sys.stderr, flush=True)
        finally:
            while self.step(0):  # what already arrived is stored and acknowledged before we leave
                pass
            if self.leave_on_stop and self.persistent:
                self._leave()
            else:
                # The session stays: the broker keeps this worker's share until it comes back (a restart).
                self.client.disconnect()
            self.client.loop_stop()
            if self.show_stats:
                print(self.stats.line(self.q.qsize(), len(self._pending)), file=sys.stderr, flush=True)

    def _leave(self, quiet_s: float = 1.0, max_s: float = 60.0) -> None:
        """Leave the group for good (scale-down): stop new routing to us, take what the session still holds,
        then end the session. Without this, a stopped worker's session keeps receiving its share."""
        self.client.unsubscribe(self.batch_filter)
        deadline = time.monotonic() + max_s
        quiet_until = time.monotonic() + quiet_s
        while time.monotonic() < deadline:
            if self.step(0.1):
                quiet_until = time.monotonic() + quiet_s
            elif time.monotonic() >= quiet_until and not self._pending:
                break
        props = Properties(PacketTypes.DISCONNECT)
        props.SessionExpiryInterval = 0
        self.client.disconnect(properties=props)

    def step(self, timeout_s: float) -> int:
        """Take up to max_group messages, store them in one transaction, acknowledge. Returns how many."""
        if self._pending and time.monotonic() < self._retry_at:
            self.stop_ev.wait(min(timeout_s, self._retry_at - time.monotonic()))
            return 0
        entries = self._pending
        self._pending = []
        try:
            if not entries:
                entries.append(self.q.get(timeout=timeout_s) if timeout_s else self.q.get_nowait())
        except queue.Empty:
            return 0
        while len(entries) < self.max_group:
            try:
                entries.append(self.q.get_nowait())
            except queue.Empty:
                break
        t0 = time.perf_counter()
        decoded = [e if e.msg.obj is not None or e.msg.reason else
                   Entry(e.gen, e.mid, e.qos, rows.decode(e.msg.topic, e.msg.payload, e.msg.received, self.limits,
                                                          self.resolve))
                   for e in entries]
        t1 = time.perf_counter()
        done = self._write(decoded)
        self.stats.decode_s += t1 - t0
        self.stats.write_s += time.perf_counter() - t1
        self._ack(done)
        return len(done)

    def _write(self, entries: list[Entry]) -> list[Entry]:
        """Write all; on a transient store error keep them for a retry; on a permanent one find the message
        the store refuses and dead-letter it alone. Returns the entries that are durable now."""
        try:
            self._count(self.store.write([e.msg for e in entries]), entries)
            self._store_ok()
            return entries
        except Exception as e:  # noqa: BLE001 - a store error must not end the consumer
            if self.store.is_transient(e):
                self._retry_later(entries, e)
                return []
            log.warning("store refused a group of %d messages (%s: %s); isolating", len(entries),
                        type(e).__name__, e)
        done: list[Entry] = []
        for i, ent in enumerate(entries):
            try:
                self._count(self.store.write([ent.msg]), [ent])
            except Exception as e:  # noqa: BLE001
                if self.store.is_transient(e):
                    self._retry_later(entries[i:], e)
                    return done
                bad = Message(ent.msg.topic, ent.msg.payload, ent.msg.received, None, "store_rejected",
                              f"{type(e).__name__}: {e}")
                try:
                    self._count(self.store.write([bad]), [])
                except Exception:
                    log.exception("cannot even dead-letter a message on %s", ent.msg.topic)
                    self.stats.rejected += 1
            done.append(ent)
        self._store_ok()
        return done

    def _retry_later(self, entries: list[Entry], e: BaseException) -> None:
        msg = f"{type(e).__name__}: {' '.join(str(e).split())}"  # one line, even for libpq's
        if msg != self._store_error:
            log.warning("store unavailable (%s); holding %d messages unacknowledged", msg, len(entries))
        self._store_error = msg
        self._pending = entries
        self.stats.retries += 1
        self._retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, 10.0)

    def _store_ok(self) -> None:
        if self._store_error:
            log.info("store available again")
        self._store_error = ""
        self._backoff = 0.2

    def _count(self, res: WriteResult, entries: list[Entry]) -> None:
        st = self.stats
        st.stored += res.stored
        st.duplicates += res.duplicates
        st.records += res.records
        st.status += res.status
        st.rejected += res.dead
        st.conflicts += res.conflicts
        st.status_replays += res.status_replays
        if self.show_stats and res.stored:
            now = time.time()
            for e in entries:
                if isinstance(e.msg.obj, wire.Batch):
                    st.note_lag(now - e.msg.obj.records[-1].wall_ms / 1000)

    def _ack(self, entries: list[Entry]) -> None:
        # Commit before acknowledge: a crash between the two means a redelivery, which dedup absorbs.
        with self._ack_lock:
            for e in entries:
                if e.qos and e.gen == self._gen:
                    self.client.ack(e.mid, e.qos)
