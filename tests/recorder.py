"""Ground truth of what reached the broker: a persistent-session QoS 1 subscriber that keeps every payload.

Persistent (clean_start False, long session expiry, fixed client id) so the broker queues for it while it
reconnects after a broker restart — otherwise a batch the agent got PUBACK for could be dropped by the
broker for lack of a subscriber, and the test would blame the agent.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent import wire


class Recorder:
    def __init__(self, port: int, topic: str = "icvq/#") -> None:
        self.port = port
        self.topic = topic
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"rec-{uuid.uuid4().hex[:8]}",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def _on_connect(self, c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            c.subscribe(self.topic, qos=1)
            self.subscribed.set()

    def _on_message(self, c: Any, u: Any, m: Any) -> None:
        with self.lock:
            self.messages.append((m.topic, bytes(m.payload)))

    def start(self) -> Recorder:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", self.port, keepalive=5, clean_start=False, properties=props)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise TimeoutError("recorder did not subscribe")
        time.sleep(1.2)  # let the broker's autosave record the session
        return self

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def batches(self) -> list[wire.Batch]:
        with self.lock:
            msgs = list(self.messages)
        out = []
        for topic, payload in msgs:
            if topic.endswith("/batch"):
                b = wire.decode(payload)
                assert isinstance(b, wire.Batch)
                out.append(b)
        return out

    def statuses(self) -> list[wire.Status]:
        with self.lock:
            msgs = list(self.messages)
        return [s for t, p in msgs if t.endswith("/status") for s in [wire.decode(p)] if isinstance(s, wire.Status)]

    def unique(self) -> dict[tuple, wire.Batch]:
        return {b.id.key(): b for b in self.batches()}

    def wait(self, pred: Any, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if pred(self):
                return
            time.sleep(0.1)
        raise TimeoutError(f"recorder condition not met; {len(self.messages)} messages")
