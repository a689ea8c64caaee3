"""Campaign documents: the schema refuses wrong types, unknown keys and absurd sizes with the key path; the
manager applies a document whole or not at all, persists it privately and atomically, restores it, retires
it at its end date, and acknowledges every decision."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from agent.blackbox.campaign import CampaignError, Identity, parse, targets, validate
from agent.blackbox.campaigns import Campaigns, topics
from agent.blackbox.triggers import Trigger
from agent.clock import FakeClock
from agent.records import RecordFactory

NOW = 1_767_225_600.0  # FakeClock's wall start
GOOD: dict[str, Any] = {
    "id": "radar-w49", "revision": 2, "trigger": {"name": "can.timeout", "kinds": ["begin"],
                                                   "where": [{"field": "sensor", "op": "eq", "value": "front"}]},
    "capture": ["system", "can"], "pre_s": 20, "post_s": 5, "min_interval_s": 60, "max_snapshots": 3,
    "start": "2025-12-31T00:00:00Z", "end": NOW + 3600,
    "target": {"fleets": ["test"], "vehicles": ["VIN0001"], "software": {"agent": ["0.1.0"]}},
}
ME = Identity("test", "VIN0001", "hu", {"agent": "0.1.0", "hmi": "3.2.1"})


def _with(path: str, value: Any) -> dict[str, Any]:
    doc = json.loads(json.dumps(GOOD))
    *parents, last = path.split(".")
    d = doc
    for p in parents:
        d = d[p]
    if value is KeyError:
        del d[last]
    else:
        d[last] = value
    return doc


def test_a_good_campaign_validates_into_its_trigger() -> None:
    c = validate(GOOD, window_s=60, now_wall=NOW)
    t = c.trigger
    assert (c.id, c.revision, t.names, t.capture, t.pre_s, t.post_s, t.max_snapshots) == \
        ("radar-w49", 2, ("can.timeout",), ("system", "can"), 20, 5, 3)
    rec = RecordFactory(FakeClock())
    assert t.matches(rec.begin("can.timeout", {"sensor": "front"}))
    assert not t.matches(rec.begin("can.timeout", {"sensor": "rear"}))
    assert not t.matches(rec.end("can.timeout", 7, {"sensor": "front"}))  # kinds: begin only
    assert c.state(NOW) == "active" and c.state(NOW + 7200) == "ended"
    assert targets(c, ME) is None
    assert targets(c, Identity("test", "VIN0002", "hu", {"agent": "0.1.0"})) == "vehicle VIN0002 not targeted"
    assert targets(c, Identity("test", "VIN0001", "hu", {"agent": "0.2.0"})) == "agent 0.2.0 not targeted"


@pytest.mark.parametrize("doc, key", [
    (_with("pre_s", "30"), "pre_s"),                                   # wrong types
    (_with("revision", 1.5), "revision"),
    (_with("trigger.kinds", "begin"), "trigger.kinds"),
    (_with("capture", [1]), "capture[0]"),
    (_with("trigger.where", [{"field": "x", "op": "gt", "value": "high"}]), "trigger.where[0].value"),
    (_with("end", True), "end"),
    (_with("command", "reboot"), "command"),                           # unknown keys
    (_with("trigger.can_tx", {"id": 0x123}), "trigger.can_tx"),
    (_with("target.region", ["EU"]), "target.region"),
    (_with("trigger.where", [{"field": "x", "value": 1, "exec": "sh"}]), "trigger.where[0].exec"),
    (_with("capture", ["system", "gps"]), "capture[1]"),               # not a channel the agent has
    (_with("pre_s", 1e9), "pre_s"),                                    # absurd sizes
    (_with("pre_s", 56), "pre_s"),                                     # does not fit the 60 s ring
    (_with("max_snapshots", 10**9), "max_snapshots"),
    (_with("end", NOW + 400 * 86400), "end"),
    (_with("target.vehicles", ["V"] * 5000), "target.vehicles"),
    (_with("trigger.where", [{"field": "a", "value": 1}] * 9), "trigger.where"),
    (_with("id", "../../etc/passwd"), "id"),
    (_with("id", "batch"), "id"),
    (_with("id", "status"), "id"),
    (_with("id", "campaign"), "id"),  # the vehicle's own ACL reaches <vehicle>/_campaigns/campaign
    (_with("end", KeyError), "end"),                                   # required
    (_with("trigger", {"family": "can", "name": "can.timeout"}), "trigger"),
    (_with("end", "2026-01-01T00:00:00"), "end"),                      # no time zone
])
def test_bad_campaigns_are_refused_with_the_key_path(doc: dict[str, Any], key: str) -> None:
    with pytest.raises(CampaignError) as e:
        validate(doc, window_s=60, now_wall=NOW)
    assert e.value.key == key, str(e.value)


@pytest.mark.parametrize("payload, reason", [
    (b"{", "not JSON"), (b"\xff\xfe", "not JSON"), (b"[1, 2]", "a campaign is a JSON object"),
    (b"{\"id\": \"" + b"a" * 20000 + b"\"}", "exceeds 16384"), (b"[" * 5000 + b"]" * 5000, ""),
])
def test_garbage_payloads_are_refused(payload: bytes, reason: str) -> None:
    with pytest.raises(CampaignError) as e:
        parse(payload, window_s=60, now_wall=NOW)
    assert reason in str(e.value)


class Harness:
    def __init__(self, tmp: Path, clock: FakeClock) -> None:
        self.path = tmp / "state" / "campaigns.json"
        self.clock = clock
        self.acks: list[dict[str, Any]] = []
        self.triggers: list[Trigger] = []
        subs, ack = topics("icvq/v1", "test", "VIN0001", "hu")
        assert subs == ["icvq/v1/test/_campaigns/+", "icvq/v1/test/VIN0001/_campaigns/+"]
        self.m = Campaigns(self.path, ME, window_s=60, max_campaigns=2, wall=clock.wall, on_change=self._set,
                           send=self._send, ack_topic=ack)

    def _set(self, t: list[Trigger]) -> None:
        self.triggers = t

    def _send(self, topic: str, payload: bytes) -> bool:
        assert topic == "icvq/v1/test/VIN0001/hu/campaign"
        self.acks.append(json.loads(payload))
        return True

    def put(self, doc: dict[str, Any] | bytes, cid: str | None = None) -> dict[str, Any]:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        n = len(self.acks)
        self.m.on_message(f"icvq/v1/test/_campaigns/{cid or (doc['id'] if isinstance(doc, dict) else 'x')}", body)
        return self.acks[-1] if len(self.acks) > n else {}


def test_manager_applies_persists_restores_and_retires(tmp_path: Path) -> None:
    clock = FakeClock()
    h = Harness(tmp_path, clock)
    h.m.restore()
    assert h.put(GOOD)["state"] == "active" and [t.campaign for t in h.triggers] == ["radar-w49"]
    assert stat.S_IMODE(os.stat(h.path).st_mode) == 0o600
    assert h.put(GOOD) == {}  # the retained copy again after a reconnect: nothing to say
    bad = h.put(_with("pre_s", "x"))
    assert bad["state"] == "rejected" and bad["reason"].startswith("pre_s:")
    assert [t.campaign for t in h.triggers] == ["radar-w49"], "a bad revision leaves the running one alone"
    assert h.put(_with("target.vehicles", ["VIN0009"]))["state"] == "retired"  # retargeted away from us
    assert h.triggers == []
    assert h.put(GOOD)["state"] == "active"
    later = _with("id", "later")
    later["start"] = NOW + 60
    assert h.put(later)["state"] == "scheduled"
    assert h.put(_with("id", "third"))["reason"].startswith("this agent runs at most 2 campaigns")
    # A reboot without a broker: a new manager reads the file.
    h2 = Harness(tmp_path, clock)
    h2.m.restore()
    assert sorted(a["id"] for a in h2.m.active()) == ["later", "radar-w49"]
    assert [t.campaign for t in h2.triggers] == ["radar-w49"]
    clock.advance(61)
    h2.m.tick()
    assert sorted(t.campaign or "" for t in h2.triggers) == ["later", "radar-w49"]  # the scheduled one starts
    assert h2.acks[-1] == {**h2.acks[-1], "id": "later", "state": "active", "reason": "start time reached"}
    h2.m.tick()
    assert len([a for a in h2.acks if a["state"] == "active"]) == 1, "said once"
    clock.advance(3600)
    h2.m.tick()
    assert h2.triggers == [] and {a["state"] for a in h2.acks} == {"active", "retired"}
    assert json.loads(h2.path.read_text())["campaigns"] == [], "retired campaigns leave the file"


def test_removal_and_unwritable_store(tmp_path: Path) -> None:
    clock = FakeClock()
    h = Harness(tmp_path, clock)
    h.m.restore()
    h.put(GOOD)
    assert h.put(b"", "radar-w49")["state"] == "retired" and h.triggers == []
    h.path.parent.chmod(0o500)
    try:
        if os.access(h.path.parent, os.W_OK):  # root ignores the mode: make the directory a file instead
            h.path.parent.chmod(0o700)
            h.m.path = tmp_path / "a-file" / "campaigns.json"
            (tmp_path / "a-file").write_text("")
        ack = h.put(GOOD)
    finally:
        h.path.parent.chmod(0o700)
    assert ack["state"] == "rejected" and "stored" in ack["reason"] and h.triggers == []
    assert h.m.active() == []


def test_removal_on_the_fleet_topic_leaves_the_vehicles_campaign_of_that_id(tmp_path: Path) -> None:
    """Fleet and vehicle topics share one id space. A purge on the fleet topic (`campaign retire ID --purge`
    without --vehicle) must not stop the vehicle's campaign: its retained document stays on the broker, so it
    came back at the next reconnect (found in an acceptance run). Removal on its own topic retires it."""
    h = Harness(tmp_path, FakeClock())
    h.m.restore()
    mine = "icvq/v1/test/VIN0001/_campaigns/radar-w49"
    h.m.on_message(mine, json.dumps(GOOD).encode())
    assert h.acks[-1]["state"] == "active"
    n = len(h.acks)
    h.m.on_message("icvq/v1/test/_campaigns/radar-w49", b"")
    assert len(h.acks) == n and [a["id"] for a in h.m.active()] == ["radar-w49"] and h.triggers
    h.m.on_message(mine, b"")
    assert h.acks[-1]["state"] == "retired" and h.m.active() == [] and h.triggers == []


def test_a_campaign_refused_at_capacity_starts_when_a_slot_frees(tmp_path: Path) -> None:
    """Its retained copy would come back only at the next reconnect, which on a parked car may be days."""
    clock = FakeClock()
    h = Harness(tmp_path, clock)
    h.m.restore()
    short = _with("id", "short")
    short["end"] = NOW + 60
    assert h.put(GOOD)["state"] == "active" and h.put(short)["state"] == "active"
    third, fourth = _with("id", "third"), _with("id", "fourth")
    ack = h.put(third)
    assert ack["state"] == "rejected" and ack["reason"].endswith("it starts when one of them ends")
    assert h.put(fourth)["state"] == "rejected"
    h.m.on_message("icvq/v1/test/_campaigns/fourth", b"")         # the backend withdrew it meanwhile
    h.put(b"", "radar-w49")                                     # a slot frees: the first waiting one runs
    assert [(a["id"], a["state"]) for a in h.acks[-2:]] == [("radar-w49", "retired"), ("third", "active")]
    assert sorted(t.campaign or "" for t in h.triggers) == ["short", "third"]
    assert h.put(_with("id", "fifth"))["state"] == "rejected"
    clock.advance(61)                                           # "short" ends by its date: the next one runs
    h.m.tick()
    assert sorted(t.campaign or "" for t in h.triggers) == ["fifth", "third"]
    assert "fourth" not in {a["id"] for a in h.m.active()}
    stored = {c["id"] for c in json.loads(h.path.read_text())["campaigns"]}
    assert stored == {"third", "fifth"}


def test_a_stored_campaign_that_no_longer_targets_the_unit_stops_at_restore(tmp_path: Path) -> None:
    """A campaign for hmi 3.2.1 kept capturing after an update to 3.3.0, until its end date: the restore did not
    check the target, and the retained copy, identical to the stored one, was taken for the one running."""
    h = Harness(tmp_path, FakeClock())
    h.m.restore()
    doc = _with("target.software", {"hmi": ["3.2.1"]})
    assert h.put(doc)["state"] == "active"
    same = Harness(tmp_path, h.clock)  # a reboot, still targeted: restored as before
    same.m.restore()
    assert [a["id"] for a in same.m.active()] == ["radar-w49"] and same.triggers
    updated = Harness(tmp_path, h.clock)  # a reboot after the update
    updated.m.me = Identity("test", "VIN0001", "hu", {"agent": "0.1.0", "hmi": "3.3.0"})
    updated.m.restore()
    assert updated.m.active() == [] and updated.triggers == []
    assert json.loads(updated.path.read_text())["campaigns"] == [], "it leaves the file"
    again = updated.put(doc)  # its retained copy at the next connection
    assert again["state"] == "ignored" and again["reason"] == "hmi 3.3.0 not targeted"


def test_refused_campaigns_are_counted_where_status_shows_them(tmp_path: Path) -> None:
    """The manager counted a refused document, but nothing read the count: `icvq status --json` now has it."""
    from agent.blackbox.wiring import Parts
    from agent.config import load
    from tools.bench.peer import icvq_conf

    cfg = load(icvq_conf(tmp_path, 1), lean=True)
    parts = Parts(cfg, FakeClock(), emit=lambda r: None, send=lambda t, b: False)
    assert parts.status()["campaign_counters"] == {}
    inbox = parts.uplink_hooks()["inbox"]
    inbox(f"icvq/v1/{cfg.vehicle.fleet}/_campaigns/bad", b"\xff not json")
    inbox(f"icvq/v1/{cfg.vehicle.fleet}/_campaigns/deep", b"[" * 5000 + b"]" * 5000)
    assert parts.status()["campaign_counters"] == {"rejected": 2, "ack_unsent": 2}
