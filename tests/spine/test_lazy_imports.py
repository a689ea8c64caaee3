"""Modules the idle daemon does not import until a rare path needs them (issue 13: idle RSS) are imported by that
path, and it works: each case runs in a fresh interpreter, checks the module is not loaded after the idle path's
imports, runs the rare path, and checks the result and that the module is now loaded. A late import that failed
on a car would otherwise be found only when the rare thing happened there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PRELUDE = """
import json, sys, tempfile
from pathlib import Path
import agent.daemon  # everything the idle daemon imports at start
LAZY = sys.argv[1]
before = LAZY in sys.modules
tmp = Path(tempfile.mkdtemp())
"""

CAMPAIGN = """
NOW = 1_767_225_600.0
DOC = {"id": "radar-w49", "revision": 2, "trigger": {"name": "can.timeout", "kinds": ["begin"]},
       "capture": ["system"], "pre_s": 20, "post_s": 5, "end": NOW + 3600,
       "target": {"fleets": ["test"]}}
from agent.blackbox import campaign_store
from agent.blackbox.campaigns import Campaigns
from agent.blackbox.campaign_types import Identity
ME = Identity("test", "VIN0001", "hu", {"agent": "0.1.0"})
def manager():
    return Campaigns(tmp / "campaigns.json", ME, window_s=60, max_campaigns=4, wall=lambda: NOW,
                     on_change=lambda triggers: None)
"""

CASES = {
    # A campaign arrives over MQTT.
    "campaign-message": ("agent.blackbox.campaign", CAMPAIGN + """
m = manager()
m.on_message("icvq/v1/test/_campaigns/radar-w49", json.dumps(DOC).encode())
result = [a["id"] for a in m.active()]
"""),
    # Campaigns stored by an earlier run are restored at start.
    "campaign-restore": ("agent.blackbox.campaign", CAMPAIGN + """
campaign_store.save(tmp / "campaigns.json", [DOC])
m = manager()
m.restore()
result = [a["id"] for a in m.active()]
"""),
    # `icvq status` while the agent is down lists the stored campaigns.
    "campaign-stored-status": ("agent.blackbox.campaign", CAMPAIGN + """
from types import SimpleNamespace
from agent.blackbox.wiring import stored_status
campaign_store.save(tmp / "campaigns.json", [DOC])
bc = SimpleNamespace(enabled=True, campaigns=True, max_campaigns=4, campaigns_path=str(tmp / "campaigns.json"),
                     window_s=60)
result = [a["id"] for a in stored_status(SimpleNamespace(blackbox=bc), NOW)["campaigns"]]
"""),
}
EXPECTED = {
    "campaign-message": ["radar-w49"],
    "campaign-restore": ["radar-w49"],
    "campaign-stored-status": ["radar-w49"],
}

EPILOGUE = """
print(json.dumps({"before": before, "after": LAZY in sys.modules, "result": result}))
"""


@pytest.mark.parametrize("case", sorted(CASES))
def test_rare_path_imports_its_module(case: str) -> None:
    module, body = CASES[case]
    out = subprocess.run([sys.executable, "-c", PRELUDE + body + EPILOGUE, module], cwd=REPO, capture_output=True,
                         text=True, env={"PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert not res["before"], f"{module} is imported on the idle path"
    assert res["after"], f"{case} did not import {module}: the case does not exercise the lazy path"
    assert res["result"] == EXPECTED[case]
