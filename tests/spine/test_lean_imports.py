"""A disabled probe costs nothing at run time: the daemon's config keeps no module of it loaded (issue 13)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# What the daemon does at start (agent/daemon.py main: load(lean=True), then build_probes), in a fresh
# interpreter so no other test's imports count.
SCRIPT = """
import json, sys
from agent.config import load
from agent.daemon import build_probes
from agent.probe import ProbeContext
from agent.clock import SystemClock
lean = load(sys.argv[1], lean=True)
probes = build_probes(lean, ProbeContext(clock=SystemClock(), emit=lambda r: None))
modules = sorted(m for m in sys.modules if m.startswith("agent.probes."))
full = load(sys.argv[1])
print(json.dumps({"modules": modules,
                  "enabled": sorted(n for n, c in lean.probes.items() if c.enabled),
                  "probes": sorted(p.name for p in probes),
                  "same_digest": full.digest == lean.digest,
                  "plain": lean.plain()["probes"]["display"] == full.plain()["probes"]["display"]}))
"""


def test_disabled_probes_import_nothing() -> None:
    """config/agent.toml, the documented default: system on; display, link and CAN off (their tables are
    there in full, and are still validated)."""
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(REPO / "config" / "agent.toml")], cwd=REPO,
                         capture_output=True, text=True, check=True, env={"PYTHONPATH": str(REPO)})
    res = json.loads(out.stdout)
    assert res["enabled"] == ["system"] and res["probes"] == ["system"]
    assert [m for m in res["modules"] if not m.startswith("agent.probes.system")] == [], \
        "modules of disabled probes stayed loaded"
    assert res["same_digest"] and res["plain"], "the lean config must describe the same configuration"


def test_a_disabled_probe_table_is_still_checked(tmp_path: Path) -> None:
    from agent.config import load
    from agent.errors import ConfigError

    p = tmp_path / "agent.toml"
    p.write_text('[vehicle]\nid = "V"\ndevice = "hu"\nfleet = "f"\n'
                 '[probes.display]\nenabled = false\nfb_pth = "/dev/fb0"\n')
    try:
        load(p, lean=True)
    except ConfigError as e:
        assert "probes.display.fb_pth" in str(e)
    else:
        raise AssertionError("an unknown key in a disabled probe's table must stop the agent")


# Only the collections load() runs itself: an idle daemon may run no full collection for hours, so garbage it
# leaves (a disabled probe's classes, module dict and functions, in reference cycles) stays resident.
GARBAGE = """
import gc, json, sys
gc.disable()
from agent.config import load
lean = load(sys.argv[1], lean=True)
left = [f"{o.__module__}.{o.__qualname__}" for o in gc.get_objects()
        if isinstance(o, type) and str(o.__dict__.get("__module__", "")).startswith("agent.probes.")
        and not o.__module__.startswith("agent.probes.system")]
print(json.dumps(left))
"""


def test_disabled_probes_leave_no_garbage() -> None:
    """load(lean=True) frees the disabled probes' classes itself (issue 13: ≈ 250 KiB held at idle when the
    Configs were still referenced during its collection)."""
    out = subprocess.run([sys.executable, "-c", GARBAGE, str(REPO / "config" / "agent.toml")], cwd=REPO,
                         capture_output=True, text=True, check=True, env={"PYTHONPATH": str(REPO)})
    assert json.loads(out.stdout) == [], "classes of disabled probes outlived load()"


ONE_AT_A_TIME = """
import json, sys
import agent.config as config
seen = []
orig = config.probe_module
def probe_module(name):
    seen.append(sorted({m.split(".")[2] for m in sys.modules if m.startswith("agent.probes.")}))
    return orig(name)
config.probe_module = probe_module
config.load(sys.argv[1], lean=True)
print(json.dumps(seen))
"""


def test_disabled_probes_are_read_one_at_a_time() -> None:
    """Start-up holds one disabled probe's settings at a time: a peak of all three stayed resident as free
    pymalloc pools (issue 13)."""
    out = subprocess.run([sys.executable, "-c", ONE_AT_A_TIME, str(REPO / "config" / "agent.toml")], cwd=REPO,
                         capture_output=True, text=True, check=True, env={"PYTHONPATH": str(REPO)})
    assert json.loads(out.stdout) == [[], [], [], []], "a disabled probe's modules were still loaded"
