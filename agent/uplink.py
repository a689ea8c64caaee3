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

Idle wake-ups: paho's network loop selects with a timeout of keepalive/4 (paho's default 1 s was one wake-up
a second; its keep-alive check only needs to run well within keepalive_s), and our connection thread blocks
until the connection dies instead of checking every second.
"""

from __future__ import annotations

import itertools
import logging
import queue
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from . import private, tls, wire
from .config import UplinkConfig, VehicleConfig
from .dataclass_shared import dataclass
from .errors import ConfigError
from .probe import UplinkView
from .wayback import WayBack, connection_stalled

log = logging.getLogger("icvq.uplink")

UNSUPPORTED_PROTOCOL = 0x84
V3_UNACCEPTABLE_PROTOCOL = 0x01
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


def next_protocol(current: str, configured: str, failure_code: int | None) -> str:
    """v5 first; fall back to 3.1.1 only when configured "auto" and the broker says it does not speak v5:
    CONNACK 0x84 (v5 Unsupported Protocol Version) or 0x01 (a 3.1.1 broker's "unacceptable protocol level").
    A broker that merely vanishes mid-handshake (a restart under load) is no reason: a fleet must not get
    stuck on 3.1.1, which has no PUBACK reason codes, after one bad minute."""
    if configured != "auto":
        return configured
    if current == "5" and failure_code in (UNSUPPORTED_PROTOCOL, V3_UNACCEPTABLE_PROTOCOL):
        return "3.1.1"
    return current


def backoff_s(attempt: int, lo: float, hi: float, rnd: Callable[[], float] = random.random) -> float:
    """Exponential back-off with full jitter: a fleet coming out of one tunnel must not reconnect in step."""
    cap = min(hi, lo * 2 ** min(attempt, 20))
    return lo + (cap - lo) * rnd()


LOST, UNREACHABLE, REFUSED = "lost", "unreachable", "refused"
GOOD_SESSION_S = 10.0


def retry_delay_s(outcome: str, failures: int, cfg: UplinkConfig,
                  rnd: Callable[[], float] = random.random) -> float:
    """How long to wait before the next attempt (a nudge from agent/wayback.py cuts it short).
    LOST: a session that had lasted ended; UNREACHABLE: TCP did not connect; REFUSED: the broker answered and
    said no (or a fresh session died at once). See the module docstring for why each."""
    if outcome == LOST:
        return cfg.reconnect_probe_s * rnd()
    if outcome == UNREACHABLE:
        return cfg.reconnect_probe_s * (0.5 + rnd())
    return backoff_s(failures, cfg.backoff_min_s, cfg.backoff_max_s, rnd)


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
            lasted = time.monotonic() - started
            new = next_protocol(self.protocol, self.cfg.protocol, code)
            if new != self.protocol:
                log.warning("broker refused MQTT v5; falling back to MQTT 3.1.1")
                self.protocol = new
                continue
            # A session that worked (it lasted, or the broker acknowledged something) ended: the broker went
            # away (restart, link). One that died at once after CONNACK is a refusal in disguise (a takeover
            # loop, a broker kicking us): back off.
            if code == 0 and (lasted >= GOOD_SESSION_S or (self.last_ack_mono or 0.0) > started):
                outcome = LOST
            elif code is None:
                outcome = UNREACHABLE
            else:
                outcome = REFUSED
            delay = retry_delay_s(outcome, failures, self.cfg)
            failures = 0 if outcome == LOST else failures + (outcome == REFUSED)
            # _hold ended a stalled connection on news that the way is back: that news is the reason, no wait.
            why = self._resume or self._wayback.wait(delay)
            self._resume = ""
            if why and not self._stop.is_set():
                log.info("uplink: %s; reconnecting now", why)
                self.last_way_back = why
                # Never faster than twice a second, whatever the kernel or the link probe report.
                self._stop.wait(max(0.0, started + 0.5 - time.monotonic()))

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
        except ConfigError as e:
            # A secret file others may read (agent/private.py): a local matter, back off as after a refusal.
            self._note_error(str(e), "config")
            return NO_CONNACK
        except (ssl.SSLError, ValueError) as e:
            # TCP connected and TLS said no (or the settings are unusable): the broker is there, back off.
            why = tls.classify(str(e))
            self._note_error(f"connect to {self.cfg.host}:{self.cfg.port} failed: {why.text if why else e}",
                             why.code if why else "tls_failed")
            return NO_CONNACK
        except OSError as e:
            self._note_error(f"connect to {self.cfg.host}:{self.cfg.port} failed: {e}", "unreachable")
            return None
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
                if self._stop.is_set():
                    return NO_CONNACK
                if self._connack:
                    self._note_error(f"broker refused the connection: CONNACK reason {self._connack[0]:#x}",
                                     "connack_refused")
                    return self._connack[0]
                why = self._diagnose()
                self._note_error(why.text if why else "broker closed the connection before CONNACK (client "
                                 "certificate, credentials or protocol refused?)", why.code if why else "no_connack")
                return NO_CONNACK
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
            sock = client.socket()
            if why and not self._dead.is_set() and isinstance(sock, socket.socket) and connection_stalled(sock):
                try:
                    # paho's loop sees EOF at once; a DISCONNECT alone could sit behind a full send buffer.
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return why
        return ""

    def _diagnose(self) -> tls.Refusal | None:
        """Why the broker closed a TLS connection before CONNACK, asked with the context that connection used:
        the certificate it presented, not one installed since, and no second SSLContext and CA/key load."""
        if self._tls_ctx is None:
            return None
        return tls.diagnose(self.cfg.host, self.cfg.port, self._tls_ctx, min(self.cfg.connect_timeout_s, 5.0))

    def _note_error(self, msg: str, code: str = "", level: int = logging.WARNING) -> None:
        """Log a new failure once; `code` marks a failed connect attempt (the last_connect_error fact)."""
        if msg != self.last_error:
            log.log(level, "uplink: %s", msg)
        self.last_error = msg
        if code:
            prev = self.last_connect_error
            since = prev["since"] if prev and prev["code"] == code else time.time()
            self.last_connect_error = {"code": code, "text": msg, "since": since}
