"""How the daemon hooks the black box in, kept here so daemon.py carries only one-line calls.

`Parts` is built before the uplink (the uplink needs the campaign subscriptions at construction) and is a
harmless null object when `[blackbox] enabled = false`: no thread, no subscription, `tap` does nothing.
Campaigns are persisted beside the spool unless `campaigns_path` says otherwise, the snapshot budget
beside them.

The campaign manager (campaigns.py, with campaign_store.py and campaign_types.py: ~60 KiB of Python objects
once imported, tracemalloc) is built on first need: a campaign message arrives, or the campaigns file holds
some at start. Until then the subscriptions are all a car without campaigns holds (issue 13: idle RSS).
Threads: the manager may be built on paho's network thread (a message) or the main thread (start), under
`_lock`; `campaigns` is read without it (one reference, None or the manager).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..clock import Clock
from ..config import AgentConfig
from ..records import Record
from .recorder import BlackBox

if TYPE_CHECKING:
    from .campaigns import Campaigns

log = logging.getLogger("icvq.blackbox")


def topics(prefix: str, fleet: str, vehicle: str, device: str) -> tuple[list[str], str]:
    """(subscriptions, acknowledgement topic) of the campaigns (docs/wire-format.md; campaigns.py names it too)."""
    p = prefix.rstrip("/")
    return [f"{p}/{fleet}/_campaigns/+", f"{p}/{fleet}/{vehicle}/_campaigns/+"], \
        f"{p}/{fleet}/{vehicle}/{device}/campaign"


def campaigns_path(cfg: AgentConfig) -> Path:
    bc = cfg.blackbox
    return Path(bc.campaigns_path) if bc.campaigns_path else Path(cfg.spool.path).parent / "campaigns.json"


def budget_path(cfg: AgentConfig) -> Path | None:
    """Beside the campaigns (budget_store.py); none for a spool in memory, which keeps nothing on disk."""
    return None if cfg.spool.path == ":memory:" else campaigns_path(cfg).with_name("blackbox-budget.json")


def stored_status(cfg: AgentConfig, now: float) -> dict[str, Any]:
    """`icvq status` while the agent is down: the campaigns it will run, read from its file (read-only)."""
    bc = cfg.blackbox
    if not bc.enabled:
        return {"enabled": False}
    if not bc.campaigns or bc.max_campaigns == 0:
        return {"enabled": True, "campaigns": []}  # the file may hold some from before: none will run
    from . import campaign_store
    from .campaign_types import CampaignError
    from .campaigns import schema

    path = campaigns_path(cfg)
    if path.exists() and not os.access(path, os.R_OK):
        return {"enabled": True, "campaigns_error": f"{path}: no permission to read (mode 0600, owner icvq)"}
    out = []
    for doc in campaign_store.load(path):
        try:
            out.append(schema().summary(schema().validate(doc, window_s=bc.window_s, now_wall=now), now))
        except CampaignError:
            continue
    return {"enabled": True, "campaigns": out}


class Parts:
    def __init__(self, cfg: AgentConfig, clock: Clock, emit: Callable[[Record], None],
                 send: Callable[[str, bytes], bool], software: Mapping[str, str] | None = None,
                 refresh_birth: Callable[[], bool] | None = None) -> None:
        bc = cfg.blackbox
        self.box: BlackBox | None = BlackBox(bc, clock, emit, budget_path=budget_path(cfg)) if bc.enabled else None
        self.campaigns: Campaigns | None = None  # built by _manager() on first need (see the module docstring)
        self.subscriptions: tuple[str, ...] = ()
        self._refresh_birth: Callable[[], bool] | None = None
        self._lock = threading.Lock()
        self._cfg = cfg
        self._clock = clock
        self._send = send
        self._software = software
        self._ack_topic = ""
        if self.box is not None and bc.campaigns and bc.max_campaigns > 0:
            v = cfg.vehicle
            subs, self._ack_topic = topics(cfg.uplink.topic_prefix, v.fleet, v.id, v.device)
            self._refresh_birth = refresh_birth
            self.subscriptions = tuple(subs)

    def _manager(self) -> Campaigns:
        """The campaign manager, built at the first call (any thread; only when campaigns are configured)."""
        with self._lock:
            if self.campaigns is not None:
                return self.campaigns
            from .campaign_types import Identity
            from .campaigns import Campaigns

            assert self.box is not None
            cfg, bc, v = self._cfg, self._cfg.blackbox, self._cfg.vehicle
            # `software` is what the birth message reports (agent/software.py): campaigns target those versions.
            me = Identity(v.fleet, v.id, v.device, {**(self._software or cfg.agent.components), "agent": __version__})
            m = Campaigns(campaigns_path(cfg), me, window_s=bc.window_s, max_campaigns=bc.max_campaigns,
                          wall=self._clock.wall, on_change=self._campaigns_changed, send=self._send,
                          ack_topic=self._ack_topic)
            self.box.on_tick.append(m.tick)  # the black box thread iterates by index: an append is safe
            self.campaigns = m
            return m

    def _inbox(self, topic: str, payload: bytes) -> None:
        """A message on a campaign topic (paho's thread)."""
        self._manager().on_message(topic, payload)

    def _campaigns_changed(self, triggers: list[Any]) -> None:
        assert self.box is not None
        self.box.set_campaign_triggers(triggers)
        if self._refresh_birth is not None:
            self._refresh_birth()  # the retained birth lists the running campaigns (`campaign list` reads it)

    def uplink_hooks(self) -> dict[str, Any]:
        if not self.subscriptions:
            return {}
        return {"subscriptions": self.subscriptions, "inbox": self._inbox}

    def attach(self, pipeline: Any) -> None:
        if self.box is not None:
            pipeline.observers.append(self.box.observe)
            pipeline.health_sources.append(self.box.health)

    def tap(self, channel: str, fields: Mapping[str, Any]) -> None:
        if self.box is not None:
            self.box.tap(channel, fields)

    def start(self) -> None:
        if self.box is None:
            return
        # Stored campaigns are restored before the uplink can deliver newer ones; no file, no manager. A file
        # with none left (all retired) is read by its own small module, not the manager's.
        if self.subscriptions and (path := campaigns_path(self._cfg)).exists():
            from . import campaign_store

            docs = campaign_store.load(path)
            if docs:
                self._manager().restore(docs)
        self.box.start()

    def stop(self) -> None:
        if self.box is not None:
            self.box.stop()

    def campaign_ids(self) -> list[str]:
        return [c["id"] for c in self.campaigns.active()] if self.campaigns else []

    def status(self) -> dict[str, Any]:
        if self.box is None:
            return {"enabled": False}
        # The manager's counters (rejected, accepted, errors, store_failed, ack_unsent): a refused or unanswered
        # campaign is counted where `icvq status --json` shows it, not only in an acknowledgement that may be lost.
        return {"enabled": True, **self.box.status(),
                "campaigns": self.campaigns.active() if self.campaigns else [],
                "campaign_counters": self.campaigns.counters.snapshot() if self.campaigns else {}}
