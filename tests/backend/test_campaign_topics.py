"""The campaign CLI's topic layout is the one the agents subscribe to (agent/blackbox/campaigns.topics)."""

from __future__ import annotations

import argparse

from agent.blackbox.campaigns import topics
from tools.ingest.campaign import Topics


def test_cli_publishes_where_the_agents_listen() -> None:
    t = Topics.of(argparse.Namespace(topic_prefix="icvq/v1/", fleet="f1"))
    subs, _ = topics("icvq/v1", "f1", "VIN1", "hu")
    assert [t.campaign("+"), t.campaign("+", "VIN1")] == subs
    assert t.campaign("hangs") == "icvq/v1/f1/_campaigns/hangs"
    assert t.campaign("hangs", "VIN1") == "icvq/v1/f1/VIN1/_campaigns/hangs"
    assert t.listing() == ["icvq/v1/f1/_campaigns/+", "icvq/v1/f1/+/_campaigns/+", "icvq/v1/f1/+/+/status"]
    assert (t.scope(t.campaign("hangs")), t.scope(t.campaign("hangs", "VIN1"))) == ("fleet", "VIN1")
