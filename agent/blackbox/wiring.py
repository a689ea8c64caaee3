"""How the daemon hooks the black box in, kept here so daemon.py carries only one-line calls.

`Parts` is built before the uplink (the uplink needs the campaign subscriptions at construction) and is a
harmless null object when `[blackbox] enabled = false`: no thread, no subscription, `tap` does nothing.
Campaigns are persisted beside the spool unless `campaigns_path` says otherwise, the snapshot budget
beside them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .. import __version__
from ..clock import Clock
from ..config import AgentConfig
from ..records import Record
from . import campaign_store
from .campaign_types import CampaignError, Identity
from .campaigns import Campaigns, schema, topics
from .recorder import BlackBox

log = logging.getLogger("icvq.blackbox")


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
        self.campaigns: Campaigns | None = None
        self.subscriptions: tuple[str, ...] = ()
        self._refresh_birth: Callable[[], bool] | None = None
        if self.box is not None and bc.campaigns and bc.max_campaigns > 0:
            v = cfg.vehicle
            subs, ack = topics(cfg.uplink.topic_prefix, v.fleet, v.id, v.device)
            path = campaigns_path(cfg)
            # `software` is what the birth message reports (agent/software.py): campaigns target those versions.
            me = Identity(v.fleet, v.id, v.device, {**(software or cfg.agent.components), "agent": __version__})
            self.campaigns = Campaigns(path, me, window_s=bc.window_s, max_campaigns=bc.max_campaigns,
                                       wall=clock.wall, on_change=self._campaigns_changed, send=send,
                                       ack_topic=ack)
            self._refresh_birth = refresh_birth
            self.subscriptions = tuple(subs)

    def _campaigns_changed(self, triggers: list[Any]) -> None:
        assert self.box is not None
        self.box.set_campaign_triggers(triggers)
        if self._refresh_birth is not None:
            self._refresh_birth()  # the retained birth lists the running campaigns (`campaign list` reads it)

    def uplink_hooks(self) -> dict[str, Any]:
        if self.campaigns is None:
            return {}
        return {"subscriptions": self.subscriptions, "inbox": self.campaigns.on_message}

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
        if self.campaigns is not None:
            self.campaigns.restore()
            self.box.on_tick.append(self.campaigns.tick)
        self.box.start()

    def stop(self) -> None:
        if self.box is not None:
            self.box.stop()

    def campaign_ids(self) -> list[str]:
        return [c["id"] for c in self.campaigns.active()] if self.campaigns else []

    def status(self) -> dict[str, Any]:
        if self.box is None:
            return {"enabled": False}
        return {"enabled": True, **self.box.status(),
                "campaigns": self.campaigns.active() if self.campaigns else []}
