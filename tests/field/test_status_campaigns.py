"""The `context` row of `icvq status` names each campaign's window: a scheduled one says when it starts
(it read "scheduled until <end>", which looks like a start date); a stopped agent's row lists only the stored
campaigns it would run."""

from __future__ import annotations

import time
from pathlib import Path

from agentproc import to_toml

from agent.blackbox import campaign_store
from agent.blackbox.campaign import summary, validate
from agent.blackbox.wiring import stored_status
from agent.config import load
from agent.fieldcli.status import _blackbox

NOW = 1_800_000_000.0


def _t(x: float | None) -> str:
    return "-" if x is None else time.strftime("%H:%M", time.gmtime(x))


def test_scheduled_campaign_shows_its_start_and_an_active_one_its_end() -> None:
    doc = {"id": "later", "trigger": {"family": "display"}, "start": NOW + 3600, "end": NOW + 7200}
    camps = [summary(validate(doc, window_s=60, now_wall=NOW), NOW),
             summary(validate({**doc, "id": "now", "start": NOW - 60}, window_s=60, now_wall=NOW), NOW)]
    row = _blackbox({"enabled": True, "ring": {"bytes": 1024}, "counters": {}, "campaigns": camps}, _t)
    assert f"later (scheduled from {_t(NOW + 3600)} until {_t(NOW + 7200)})" in row, row
    assert f"now (active until {_t(NOW + 7200)})" in row, row


def test_stopped_agent_lists_stored_campaigns_only_when_it_would_run_them(tmp_path: Path) -> None:
    """`icvq status` of a stopped agent reads campaigns.json; with `blackbox.campaigns = false` (or
    max_campaigns = 0) the agent restores none of them, so the row must not list them as active."""
    spool = tmp_path / "spool.db"
    doc = {"id": "kept", "trigger": {"family": "display"}, "end": time.time() + 3600}
    campaign_store.save(tmp_path / "campaigns.json", [doc])
    base = {"vehicle": {"id": "V", "device": "d", "fleet": "f"}, "spool": {"path": str(spool)}}
    for extra, ids in (({}, ["kept"]), ({"campaigns": False}, []), ({"max_campaigns": 0}, [])):
        cfg_path = tmp_path / "agent.toml"
        cfg_path.write_text(to_toml({**base, "blackbox": extra} if extra else base))
        st = stored_status(load(str(cfg_path)), time.time())
        assert [c["id"] for c in st["campaigns"]] == ids, (extra, st)
