"""The MQTT side: the only module that imports paho.

One paho Client per connection (reconnect_on_failure off): a new connection gets a new generation number, so a
PUBACK can never be matched to a message of an older connection (paho's `mid` restarts per connection), and
paho never resends behind our back — the spool decides what is resent. paho's callbacks only put events on a
queue the pipeline thread drains (and wake it).

Reconnecting (issue 13; the old full-jitter back-off up to 120 s took 24-68 s after a 2-minute outage):
- the way is back → try at once: agent/wayback.py wakes the wait when the link probe sees the modem
  register/attach or its TCP target answer, or when the kernel reports an interface up or a new address;
  the same kernel news while still connected (an outage shorter than keep-alive notices) ends a connection
  whose TCP is waiting out a backed-off retransmission timer or whose source address is gone, and we
  reconnect at once (3-20 s outages: link up → PUBACK p95 12.3 s → 0.05 s, tools/bench/linkback.py);
- the broker does not accept TCP (refused, unreachable, timed out) → probe again every
  `reconnect_probe_s` * U(0.5, 1.5): a TCP SYN is all it costs, and it finds a restarted broker within ~3 s;
- the broker accepted TCP and then refused (CONNACK failure, TLS, silence) or dropped a fresh session →
  exponential back-off with full jitter (`backoff_min_s`..`backoff_max_s`): it is up but does not want us now.
A fleet whose broker restarts: every car lost its session in the same second, so the first retry is drawn
uniformly from [0, reconnect_probe_s] and each probe period is jittered again; the cars that find the broker
back are spread over about 1.5 * reconnect_probe_s, and any that it then refuses under load fall into the
exponential back-off, which spreads them over up to `backoff_max_s`.
That policy, and noting why an attempt failed, is in agent/uplink_retry.py, imported at the first attempt that
fails or session that ends: a car that stays connected never runs it (issue 13: idle RSS).

Idle wake-ups: paho's network loop selects with a timeout of keepalive/4 (paho's default 1 s was one wake-up
a second; its keep-alive check only needs to run well within keepalive_s), and our connection thread blocks
until the connection dies instead of checking every second.
"""

from __future__ import annotations

import itertools
import logging
import queue
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from . import lazy, private, tls, wire
from .config import UplinkConfig, VehicleConfig
from .dataclass_shared import dataclass
from .errors import ConfigError
from .probe import UplinkView
from .wayback import WayBack

if TYPE_CHECKING:
    from .uplink_retry import GOOD_SESSION_S as GOOD_SESSION_S
    from .uplink_retry import LOST as LOST
    from .uplink_retry import REFUSED as REFUSED
    from .uplink_retry import UNREACHABLE as UNREACHABLE
    from .uplink_retry import UNSUPPORTED_PROTOCOL as UNSUPPORTED_PROTOCOL
    from .uplink_retry import V3_UNACCEPTABLE_PROTOCOL as V3_UNACCEPTABLE_PROTOCOL
    from .uplink_retry import backoff_s as backoff_s
    from .uplink_retry import next_protocol as next_protocol
    from .uplink_retry import retry_delay_s as retry_delay_s

log = logging.getLogger("icvq.uplink")

# Process-wide, so the connections of an Uplink rebuilt by a reload never reuse a generation number.
_GENERATIONS = itertools.count(1)
NO_CONNACK = -1  # TCP (and TLS) connected, but the broker closed or stayed silent instead of answering CONNECT
PACKET_TOO_LARGE = 0x95
BATCH_TOPIC_ALIAS = 1


@dataclass(frozen=True)
class Up:
    gen: int
    max_packet: int | None


@dataclass(frozen=True)
class Down:
    gen: int
    reason: str


@dataclass(frozen=True)
class Acked:
    gen: int
    mid: int
    reason_code: int


UplinkEvent = Up | Down | Acked


class EventQueue(queue.Queue[UplinkEvent]):
    """The uplink's events for the pipeline; `on_put` wakes the pipeline thread, which sleeps until something
    is due instead of polling this queue."""

    def __init__(self) -> None:
        super().__init__()
        self.on_put: Callable[[], None] = lambda: None

    def put(self, item: UplinkEvent, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self.on_put()


def topics(cfg: UplinkConfig, v: VehicleConfig) -> tuple[str, str]:
    base = f"{cfg.topic_prefix.rstrip('/')}/{v.fleet}/{v.id}/{v.device}"
    return f"{base}/batch", f"{base}/status"


class _Client(mqtt.Client):
    """paho's threaded loop with a longer select timeout (see the module docstring)."""

    loop_timeout_s = 1.0

    def _thread_main(self) -> None:  # paho 2.x: the body of loop_start()'s thread
        try:
            self.loop_forever(timeout=self.loop_timeout_s, retry_first_connection=True)
        finally:
            self._thread = None

    def loop_stop(self) -> MQTTErrorCode:
        """paho's loop_stop tests `self._thread` and then joins it, while a loop that ends by itself (the
        broker closed the connection) sets it to None: in between, AttributeError ended our connection thread
        and the agent never sent again (CI, a 1,000-car fleet run on a loaded machine). Held in a local."""
        t = self._thread
        if t is None:
            return MQTTErrorCode.MQTT_ERR_INVAL
        self._thread_terminate = True
        if threading.current_thread() is not t:
            t.join()
        return MQTTErrorCode.MQTT_ERR_SUCCESS


class Uplink:
    def __init__(self, cfg: UplinkConfig, vehicle: VehicleConfig, *, boot_id: str,
                 birth_fields: Callable[[], dict[str, Any]], wall_ms: Callable[[], int],
                 events: queue.Queue[UplinkEvent] | None = None, subscriptions: tuple[str, ...] = (),
                 inbox: Callable[[str, bytes], None] | None = None) -> None:
        self.cfg = cfg
        # Incoming messages (the black box's campaigns): subscribed on every connection, QoS 1; `inbox` runs
        # on paho's thread and must not block.
        self.subscriptions = subscriptions
        self.inbox = inbox
        self.vehicle = vehicle
        self.boot_id = boot_id
        self.birth_fields = birth_fields
        self.wall_ms = wall_ms
        self.events: queue.Queue[UplinkEvent] = events or EventQueue()
        self.batch_topic, self.status_topic = topics(cfg, vehicle)
        self.protocol = "3.1.1" if cfg.protocol == "3.1.1" else "5"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pub_lock = threading.Lock()  # publishers (pipeline, stop) vs the topic-alias state
        self._client: mqtt.Client | None = None
        self._gen = 0
        self._connected = threading.Event()
        self._dead = threading.Event()
        self._connack: tuple[int, int | None] | None = None
        self._alias_ok = False    # the broker's CONNACK allows at least one topic alias (per connection)
        self._alias_sent = False  # this connection's first batch has named the topic for the alias
        self.connected_since: float | None = None
        self.offline_since: float | None = time.time()  # wall clock; None while connected
        self.last_ack_wall: float | None = None
        self.last_ack_mono: float | None = None
        self.last_error = ""
        self.last_connect_error: dict[str, Any] | None = None  # {code, text, since}: why we are not connected
        self.transport = tls.transport(cfg)
        self.client_cert_not_after = tls.client_cert_not_after(cfg.tls)  # re-read at every TLS connect
        self._tls_ctx: ssl.SSLContext | None = None  # the current connection's; its diagnosis dials with it too
        self.reconnects = 0
        self.published = 0
        self._wayback = WayBack()
        self.last_way_back = ""  # why the last reconnect wait was cut short
        self._resume = ""  # set when _hold ended a stalled connection on news that the way is back

    # ------------------------------------------------------------------------------------------ public
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="uplink", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 3.0) -> None:
        self._stop.set()
        client = self._client
        if client is not None and self._connected.is_set():
            try:
                info = client.publish(self.status_topic, self._status("death", clean=True), qos=1, retain=True,
                                      properties=self._props())
                info.wait_for_publish(min(timeout_s, 1.0))
            except (RuntimeError, ValueError, OSError):
                pass
            client.disconnect()
        self._dead.set()
        self._wayback.nudge("stopping")
        if self._thread:
            self._thread.join(timeout_s)
        self._wayback.close()

    def way_back(self, reason: str) -> None:
        """Something outside the uplink saw the way to the broker come back (the link probe): while
        disconnected, try at once instead of finishing the back-off. Any thread."""
        if not self._connected.is_set():
            self._wayback.nudge(reason)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def view(self) -> UplinkView:
        return UplinkView(self.connected, self.connected_since, self.last_ack_wall, self.last_ack_mono,
                          f"{self.cfg.host}:{self.cfg.port}")

    def publish(self, payload: bytes) -> tuple[int, int] | None:
        """Queue one batch (QoS 1); returns (generation, mid) or None when not connected."""
        with self._lock:
            client, gen = self._client, self._gen
        if client is None or not self._connected.is_set():
            return None
        with self._pub_lock:
            if gen != self._gen:  # a new connection began: its alias state is not this client's
                return None
            # Topic Alias (MQTT 5): the first batch of a connection names the 47-byte topic and alias 1, the
            # rest send an empty topic. Under the same lock as the decision, so two publishers cannot both
            # think they established it.
            alias = self._alias_ok
            topic = "" if alias and self._alias_sent else self.batch_topic
            info = client.publish(topic, payload, qos=1, properties=self._batch_props(alias))
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return None
            self._alias_sent = self._alias_sent or alias
        self.published += 1
        return gen, info.mid

    def send(self, topic: str, payload: bytes) -> bool:
        """One small message outside the batch stream (QoS 1, not retained, not tracked); False if offline."""
        client = self._client
        if client is None or not self._connected.is_set():
            return False
        return client.publish(topic, payload, qos=1).rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def refresh_birth(self) -> bool:
        """Publish the birth again (retained) while connected, because what it reports changed (the black box's
        campaigns); False if offline — the next connection's birth carries it."""
        client = self._client
        if client is None or not self._connected.is_set():
            return False
        return self._publish_birth(client)

    def _publish_birth(self, client: mqtt.Client) -> bool:
        """The retained birth on the status topic: at every connection, and again when what it reports changes."""
        return client.publish(self.status_topic, self._status("birth"), qos=1, retain=True,
                              properties=self._props()).rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def note_ack(self) -> None:
        self.last_ack_wall = time.time()
        self.last_ack_mono = time.monotonic()

    # ----------------------------------------------------------------------------------------- helpers
    def _props(self) -> Properties | None:
        """Status messages (birth, death, will): say once per connection what the payloads are."""
        if self.protocol != "5":
            return None
        p = Properties(PacketTypes.PUBLISH)
        p.ContentType = wire.CONTENT_TYPE
        p.UserProperty = [("icvq-wire", str(wire.VERSION))]
        if self.cfg.message_expiry_s:
            p.MessageExpiryInterval = self.cfg.message_expiry_s
        return p

    def _batch_props(self, alias: bool) -> Properties | None:
        """Batches: only what is new per message. Content type and wire version were ~50 B of every PUBLISH
        (issue 13) and are in the birth and in the payload's own `v` anyway."""
        if self.protocol != "5" or not (alias or self.cfg.message_expiry_s):
            return None
        p = Properties(PacketTypes.PUBLISH)
        if alias:
            p.TopicAlias = BATCH_TOPIC_ALIAS
        if self.cfg.message_expiry_s:
            p.MessageExpiryInterval = self.cfg.message_expiry_s
        return p

    def _status(self, kind: str, **extra: Any) -> bytes:
        fields = {**self.birth_fields(), "transport": self.transport} if kind == "birth" else {}
        return wire.encode_status(kind, self.vehicle.id, self.vehicle.device, self.boot_id, self.wall_ms(),
                                  {**fields, **extra})

    def _make_client(self, gen: int) -> mqtt.Client:
        v5 = self.protocol == "5"
        client = _Client(CallbackAPIVersion.VERSION2,
                             client_id=f"icvq-{self.vehicle.fleet}-{self.vehicle.id}-{self.vehicle.device}",
                             protocol=MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311,
                             clean_session=None if v5 else True, reconnect_on_failure=False)
        client.loop_timeout_s = max(1.0, min(30.0, self.cfg.keepalive_s / 4))
        client.max_inflight_messages_set(self.cfg.max_inflight + 2)
        client.max_queued_messages_set(0)
        client.connect_timeout = self.cfg.connect_timeout_s
        self._tls_ctx = None
        if self.transport == tls.TLS:
            self._tls_ctx = tls.client_context(self.cfg.tls)
            client.tls_set_context(self._tls_ctx)
            self.client_cert_not_after = tls.client_cert_not_after(self.cfg.tls)
        if self.cfg.username:
            password = private.read_password(self.cfg.password_file) if self.cfg.password_file else None
            client.username_pw_set(self.cfg.username, password)
        client.will_set(self.status_topic, self._status("death", clean=False), qos=1, retain=True,
                        properties=self._props())

        def on_connect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
            max_packet = getattr(props, "MaximumPacketSize", None) if props is not None else None
            self._connack = (int(rc.value if hasattr(rc, "value") else rc), max_packet)
            # No lock here (paho's thread): nothing publishes on this connection before _connected is set below.
            self._alias_ok = v5 and (getattr(props, "TopicAliasMaximum", 0) or 0) >= BATCH_TOPIC_ALIAS
            self._alias_sent = False
            if not rc.is_failure:
                if self.subscriptions:
                    c.subscribe([(t, 1) for t in self.subscriptions])
                self._connected.set()
            else:
                self._dead.set()

        def on_disconnect(c: Any, u: Any, flags: Any, rc: Any, props: Any) -> None:
            self.last_error = f"disconnected: {rc}"
            self._connected.clear()
            self._dead.set()
            self._wayback.wake()

        def on_publish(c: Any, u: Any, mid: int, rc: Any, props: Any) -> None:
            self.events.put(Acked(gen, mid, int(rc.value if hasattr(rc, "value") else rc)))

        def on_message(c: Any, u: Any, msg: Any) -> None:
            if self.inbox is not None:
                self.inbox(msg.topic, bytes(msg.payload))

        client.on_message = on_message
        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        return client

    # ------------------------------------------------------------------------------------ connect loop
    def _run(self) -> None:
        refusal = tls.plaintext_refusal(self.cfg)
        if refusal is not None:  # held, not exited: probes and spool go on (see agent/tls.py)
            self._note_error(f"not connecting: {refusal}", "plaintext_refused", logging.ERROR)
            return
        failures = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                code = self._one_connection()
            except Exception as e:
                # Whatever the cause, the connection thread must not end: then nothing would be sent again
                # for the rest of the drive while probes and spool went on. Back off as after a refusal.
                log.exception("uplink: unexpected error in the connection loop")
                self._note_error(f"internal error: {type(e).__name__}: {e}", "internal", logging.ERROR)
                code = NO_CONNACK
            if self._stop.is_set():
                break
            from . import uplink_retry  # the first attempt that failed or session that ended (see its opening)

            failures = uplink_retry.next_attempt(self, code, started, failures)

    def _one_connection(self) -> int | None:
        """Connect, run until the connection dies. Returns 0 after a successful session, the CONNACK failure
        code, NO_CONNACK when the broker never answered CONNECT, or None when TCP/TLS did not connect."""
        with self._lock:
            self._gen = gen = next(_GENERATIONS)
        with self._pub_lock:
            self._alias_ok = self._alias_sent = False
        self._connected.clear()
        self._dead.clear()
        self._connack = None
        try:
            client = self._make_client(gen)
            client.connect(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        except (ConfigError, ssl.SSLError, ValueError, OSError) as e:
            from . import uplink_retry

            return uplink_retry.connect_failed(self, e)
        with self._lock:
            self._client = client
        client.loop_start()
        try:
            deadline = time.monotonic() + self.cfg.connect_timeout_s + 2
            while not (self._connected.is_set() or self._dead.is_set() or self._stop.is_set()):
                if time.monotonic() > deadline:
                    self._note_error("no CONNACK from broker", "no_connack")
                    return NO_CONNACK
                self._connected.wait(0.1)
            if not self._connected.is_set():
                from . import uplink_retry

                return uplink_retry.no_session(self)
            max_packet = self._connack[1] if self._connack else None
            self.connected_since = time.time()
            self.offline_since = None
            self.reconnects += 1
            if self.last_error:
                log.info("connected to %s:%d (MQTT %s)", self.cfg.host, self.cfg.port, self.protocol)
            self.last_error = ""
            self.last_connect_error = None
            if self.transport == tls.PLAINTEXT_ALLOWED:
                log.warning("connected WITHOUT TLS to %s:%d (uplink.allow_plaintext = true): telemetry and "
                            "credentials cross the network readable by anyone on the path", self.cfg.host,
                            self.cfg.port)
            self._publish_birth(client)
            self.events.put(Up(gen, max_packet))
            self._wayback.drain()
            self._resume = self._hold(client)
            if self._resume:
                self._note_error(f"connection stalled when {self._resume}; reconnecting")
            elif not self._stop.is_set():
                self._note_error("connection lost")
            return 0
        finally:
            self._connected.clear()
            if self.connected_since is not None:
                self.offline_since = time.time()
            self.connected_since = None
            self.events.put(Down(gen, self.last_error))
            if not self._stop.is_set():
                try:
                    client.disconnect()
                except (OSError, ValueError):
                    pass
            client.loop_stop()
            with self._lock:
                if self._client is client:
                    self._client = None

    def _hold(self, client: mqtt.Client) -> str:
        """Connected: sleep until the connection dies (on_disconnect and stop() wake us). Returns the news when
        the way came back under a stalled connection (see the module docstring), which the caller then ends."""
        while not self._dead.is_set():
            why = self._wayback.wait(86400.0, done=self._dead.is_set)
            if not why or self._dead.is_set():
                continue
            from .wayback_news import connection_stalled  # news under a live connection (see wayback_news.py)

            sock = client.socket()
            if isinstance(sock, socket.socket) and connection_stalled(sock):
                try:
                    # paho's loop sees EOF at once; a DISCONNECT alone could sit behind a full send buffer.
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return why
        return ""

    def _note_error(self, msg: str, code: str = "", level: int = logging.WARNING) -> None:
        """Log a new failure once; `code` marks a failed connect attempt (the last_connect_error fact)."""
        if msg != self.last_error:
            log.log(level, "uplink: %s", msg)
        self.last_error = msg
        if code:
            prev = self.last_connect_error
            since = prev["since"] if prev and prev["code"] == code else time.time()
            self.last_connect_error = {"code": code, "text": msg, "since": since}


_RETRY = frozenset({"GOOD_SESSION_S", "LOST", "REFUSED", "UNREACHABLE", "UNSUPPORTED_PROTOCOL",
                    "V3_UNACCEPTABLE_PROTOCOL", "backoff_s", "next_protocol", "retry_delay_s"})

# The reconnect policy's names (`uplink.retry_delay_s`, ...), from agent/uplink_retry.py on first use (PEP 562).
__getattr__ = lazy.forward(__name__, "uplink_retry", _RETRY)
