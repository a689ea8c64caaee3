"""Subscribe, decode strictly, store, and acknowledge only after the store committed (manual PUBACK)."""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent import wire
from agent.errors import WireError

from .store import SqliteStore

log = logging.getLogger("icvq.ingest")


class Consumer:
    def __init__(self, store: SqliteStore, host: str, port: int, topic_prefix: str = "icvq/v1",
                 group: str | None = None, client_id: str = "", stats: bool = False) -> None:
        self.store = store
        self.host, self.port = host, port
        prefix = topic_prefix.rstrip("/")
        batch = f"{prefix}/+/+/+/batch"
        self.topics = [f"$share/{group}/{batch}" if group else batch, f"{prefix}/+/+/+/status"]
        self.q: queue.Queue[Any] = queue.Queue(maxsize=10_000)
        self.stop_ev = threading.Event()
        self.stored = self.duplicates = self.rejected = 0
        self.show_stats = stats
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: self.q.put(m)

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            c.subscribe([(t, 1) for t in self.topics])

    def run(self, duration_s: float | None = None) -> None:
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        end = time.monotonic() + duration_s if duration_s else None
        last_stats = time.monotonic()
        try:
            while not self.stop_ev.is_set() and (end is None or time.monotonic() < end):
                self._drain(0.2)
                if self.show_stats and time.monotonic() - last_stats >= 5:
                    last_stats = time.monotonic()
                    print(f"ingest: stored {self.stored} duplicates {self.duplicates} rejected "
                          f"{self.rejected} queue {self.q.qsize()}", file=sys.stderr)
        finally:
            self._drain(0)
            self.client.loop_stop()
            self.client.disconnect()

    def _drain(self, timeout_s: float) -> None:
        try:
            msgs = [self.q.get(timeout=timeout_s) if timeout_s else self.q.get_nowait()]
        except queue.Empty:
            return
        while len(msgs) < 1000:
            try:
                msgs.append(self.q.get_nowait())
            except queue.Empty:
                break
        self.store.begin()
        for m in msgs:
            try:
                obj = wire.decode(m.payload)
            except WireError as e:
                self.rejected += 1
                self.store.dead_letter(m.topic, e.reason, m.payload)
                continue
            if self.store.add(m.topic, obj):
                self.stored += 1
            else:
                self.duplicates += 1
        self.store.commit()
        # Commit before acknowledge: a crash between the two means a redelivery, which dedup absorbs.
        for m in msgs:
            if m.qos:
                self.client.ack(m.mid, m.qos)
