"""Campaigns received over MQTT: validate, apply without restart, persist, acknowledge, retire at the end date.

Threads: `on_message` runs on paho's network thread (it only parses, decides and writes one small file);
`tick` runs on the black box thread once a second. Both go through one lock, and the set of triggers the
recorder sees is swapped in one assignment after the file is safely on disk: a campaign is applied whole or
not at all.

Topics (docs/wire-format.md): documents arrive retained on `<prefix>/<fleet>/_campaigns/<id>` (the fleet) and
`<prefix>/<fleet>/<vehicle>/_campaigns/<id>` (one vehicle); an empty retained message removes one. Every
decision is acknowledged (QoS 1, not retained) on `<prefix>/<fleet>/<vehicle>/<device>/campaign` as JSON:
{"id", "revision", "state": active|scheduled|rejected|ignored|retired, "reason", "t", "campaigns": [...]}.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..counters import Counters
from . import campaign_store
from .campaign_types import CampaignError, Identity
from .triggers import Trigger
from .wiring import topics as topics  # made there (idle path), named here too

if TYPE_CHECKING:
    from .campaign import Campaign

log = logging.getLogger("icvq.blackbox")

Send = Callable[[str, bytes], bool]
WAITING_MAX = 16    # campaigns remembered while max_campaigns run (each ≤ 16 KiB)


def schema() -> ModuleType:
    """The campaign document's schema and parser, imported on first use: only when a campaign arrives, is
    restored or listed (issue 13: ~60 KiB an idle car without campaigns does not hold)."""
    from . import campaign

    return campaign


class Campaigns:
    def __init__(self, path: Path, me: Identity, *, window_s: float, max_campaigns: int,
                 wall: Callable[[], float], on_change: Callable[[list[Trigger]], None],
                 send: Send | None = None, ack_topic: str = "") -> None:
        self.path = path
        self.me = me
        self.window_s = window_s
        self.max_campaigns = max_campaigns
        self.wall = wall
        self.on_change = on_change
        self.send = send
        self.ack_topic = ack_topic
        self.counters = Counters()
        self._lock = threading.Lock()
        self._by_id: dict[str, Campaign] = {}
        # The topic each campaign last arrived on. Fleet and vehicle topics share one id space, so an empty
        # message on the fleet topic must not remove the vehicle's campaign of that id: its retained document
        # stays on the broker and would come back at the next reconnect. Restored campaigns have none yet
        # (any removal applies) until their retained copy arrives again.
        self._topic_of: dict[str, str] = {}
        # Refused only because max_campaigns run: offered again when one ends (its retained copy would
        # otherwise come back only at the next reconnect, which on a parked car may be days). Bounded.
        self._waiting: dict[str, tuple[str, bytes]] = {}

    # ------------------------------------------------------------------------------------------ boot
    def restore(self, docs: list[dict[str, Any]] | None = None) -> None:
        """The campaigns of the file (or `docs`, already read from it) become current. One that no longer targets
        this unit (an update changed a targeted software version, a new vehicle identity) is dropped and leaves
        the file: its retained copy, identical, would otherwise be taken for the one already running, and it
        would capture until its end date on units the backend did not choose. When it comes again it is
        acknowledged `ignored` with the reason."""
        now = self.wall()
        untargeted = False
        for doc in campaign_store.load(self.path) if docs is None else docs:
            try:
                c = schema().validate(doc, window_s=self.window_s, now_wall=now)
            except CampaignError as e:
                log.error("stored campaign refused on restore (%s); dropping it", e)
                continue
            reason = schema().targets(c, self.me)
            if reason is not None:
                log.info("stored campaign %s no longer targets this unit (%s); dropping it", c.id, reason)
                untargeted = True
                continue
            self._by_id[c.id] = c
            log.info("campaign %s (revision %d) restored: %s until %s", c.id, c.revision, c.state(now),
                     int(c.end))
        if untargeted:
            with self._lock:
                self._commit(dict(self._by_id))  # if it fails, the next boot drops it again
        self._publish_triggers()
        self.tick()

    # --------------------------------------------------------------------------------------- network
    def on_message(self, topic: str, payload: bytes) -> None:
        """One retained or live message on a campaign topic; never raises."""
        try:
            self._on_message(topic, payload)
        except Exception:
            log.exception("campaign message on %s failed", topic)
            self.counters.inc("errors")

    def _on_message(self, topic: str, payload: bytes) -> None:
        topic_id = topic.rsplit("/", 1)[-1]
        if not payload:
            with self._lock:
                if self._waiting.get(topic_id, ("", b""))[0] == topic:
                    del self._waiting[topic_id]
                gone = self._by_id.get(topic_id)
                if gone and self._topic_of.get(topic_id, topic) != topic:
                    log.info("campaign %s: removal on %s ignored, it runs from %s", topic_id, topic,
                             self._topic_of[topic_id])
                    return
                if gone and not self._commit({k: v for k, v in self._by_id.items() if k != topic_id}):
                    return
                self._topic_of.pop(topic_id, None)
            if gone:
                log.info("campaign %s retired by the backend", topic_id)
                self._publish_triggers()
                self._ack(topic_id, gone.revision, "retired", "removed by the backend")
                self._offer_waiting()
            return
        now = self.wall()
        try:
            c = schema().parse(payload, window_s=self.window_s, now_wall=now)
            if c.id != topic_id:
                raise CampaignError("id", f"{c.id!r} does not match the topic's {topic_id!r}")
        except CampaignError as e:
            self.counters.inc("rejected")
            log.warning("campaign on %s rejected: %s", topic, e)
            self._ack(topic_id, None, "rejected", str(e))
            return
        reason = schema().targets(c, self.me)
        with self._lock:
            old = self._by_id.get(c.id)
            if old is not None and old.doc == c.doc:
                self._topic_of[c.id] = topic
                return  # the retained copy again, after a reconnect
            if reason is None and c.state(now) == "ended":
                reason = "end date already passed"
                state = "retired" if old else "ignored"
            elif reason is not None:
                state = "retired" if old else "ignored"
            elif old is None and len(self._by_id) >= self.max_campaigns:
                state, reason = "rejected", f"this agent runs at most {self.max_campaigns} campaigns"
                if c.id in self._waiting or len(self._waiting) < WAITING_MAX:
                    self._waiting[c.id] = (topic, payload)
                    reason += "; it starts when one of them ends"
            else:
                state = c.state(now)
                self._waiting.pop(c.id, None)
            new = dict(self._by_id)
            if state in ("active", "scheduled"):
                new[c.id] = c
            else:
                new.pop(c.id, None)
            if (new.keys() != self._by_id.keys() or old is not None) and not self._commit(new):
                state, reason = "rejected", "could not be stored on the device"
            elif c.id in self._by_id:
                self._topic_of[c.id] = topic
        if state in ("active", "scheduled"):
            log.info("campaign %s (revision %d) %s: trigger %s, capture %s", c.id, c.revision,
                     "updated" if old else "accepted", c.trigger.names[0], ",".join(c.trigger.capture))
            self.counters.inc("accepted")
        else:
            log.info("campaign %s %s: %s", c.id, state, reason)
        self._publish_triggers()
        self._ack(c.id, c.revision, state, reason or "")
        if old is not None and state not in ("active", "scheduled"):
            self._offer_waiting()

    def _offer_waiting(self) -> None:
        """A campaign ended: offer the slots to those refused at capacity, in the order they came."""
        with self._lock:
            free = self.max_campaigns - len(self._by_id)
            offer = list(self._waiting.items())[:max(free, 0)]
            for cid, _ in offer:
                del self._waiting[cid]
        for cid, (topic, payload) in offer:
            log.info("campaign %s: a slot is free; applying it now", cid)
            self._on_message(topic, payload)

    # ------------------------------------------------------------------------------------------ time
    def tick(self) -> None:
        """Retire campaigns whose end date passed; activate scheduled ones (their trigger set changes)."""
        now = self.wall()
        with self._lock:
            ended = [c for c in self._by_id.values() if c.state(now) == "ended"]
            if ended and not self._commit({k: c for k, c in self._by_id.items() if c not in ended}):
                ended = []  # retried next tick; triggers stay until the file agrees
            started = [c for c in self._by_id.values() if c.start is not None and c.start <= now
                       and c.id not in self._live and c.state(now) == "active"]
        for c in ended:
            log.info("campaign %s retired: end date passed", c.id)
            self._ack(c.id, c.revision, "retired", "end date passed")
        if ended or started:
            self._publish_triggers()
        for c in started:
            # The backend heard "scheduled"; say when it began collecting, so `campaign list` need not guess.
            log.info("campaign %s (revision %d) active: start time reached", c.id, c.revision)
            self._ack(c.id, c.revision, "active", "start time reached")
        if ended:
            self._offer_waiting()

    # ----------------------------------------------------------------------------------------- views
    _live: frozenset[str] = frozenset()

    def _publish_triggers(self) -> None:
        now = self.wall()
        with self._lock:
            live = [c for c in self._by_id.values() if c.state(now) == "active"]
            self._live = frozenset(c.id for c in live)
        self.on_change([c.trigger for c in live])

    def active(self) -> list[dict[str, Any]]:
        now = self.wall()
        with self._lock:
            return [schema().summary(c, now) for c in self._by_id.values()]

    def _commit(self, new: dict[str, Campaign]) -> bool:
        """Persist `new`, then make it current (caller holds the lock). False, with nothing changed, when the
        file could not be written: a campaign the device cannot keep across a reboot is not applied."""
        try:
            campaign_store.save(self.path, [dict(c.doc) for c in new.values()])
        except OSError as e:
            log.error("campaigns file %s not written (%s); keeping the previous campaigns", self.path, e)
            self.counters.inc("store_failed")
            return False
        self._by_id = new
        return True

    def _ack(self, cid: str, revision: int | None, state: str, reason: str) -> None:
        if self.send is None or not self.ack_topic:
            return
        body = json.dumps({"id": cid, "revision": revision, "state": state, "reason": reason[:300],
                           "t": round(self.wall(), 3), "campaigns": [a["id"] for a in self.active()]},
                          separators=(",", ":")).encode()
        if not self.send(self.ack_topic, body):
            self.counters.inc("ack_unsent")
