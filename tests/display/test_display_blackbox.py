"""Black-box context for a real display freeze: Xvfb + xclock (the HMI) → agent → mosquitto → ingest.

A CPU load spike is injected before the HMI is stopped; the display.freeze episode must arrive with a
`blackbox.snapshot` linked to it that covers `pre_s` before and `post_s` after the freeze's start, and whose
CPU and process columns show the spike at its place. Scaled down to keep the suite's wall time bounded
(the black box's tests get ≤ 60 s of the suite): pre 6 s / post 2 s / spike 4 s before — the defaults'
30 s / 10 s / 20 s divided by 5, the same shape. The defaults themselves are exercised on the same code with a
FakeClock in tests/blackbox/test_blackbox_units.py, and their byte cost in `python -m tools.bench blackbox`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from agentproc import AgentProc, base_config, write_config
from display_helpers import clock_ticks, wait_for
from ingest_helper import Ingest

from agent.blackbox.columns import expand
from tools.demo_parts.display import Xvfb, display_config, stop_client

PRE_S, POST_S, SPIKE_BEFORE_S, SPIKE_S = 6.0, 2.0, 4.0, 1.5
# A busy loop that names itself, so the process column can be checked without guessing what else runs.
SPINNER = ("import time\nopen('/proc/self/comm', 'w').write('icvq-spike')\n"
           f"end = time.monotonic() + {SPIKE_S}\nwhile time.monotonic() < end:\n    pass\n")


def test_freeze_arrives_with_context_showing_the_spike_before_it(tmp_path: Path, broker, xvfb: Xvfb) -> None:
    hmi = xvfb.xclock(name="bb-hmi")
    cfg = base_config(tmp_path, broker.port, probes__display=display_config(xvfb, tmp_path, "bb-hmi"),
                      blackbox={"window_s": 12.0, "pre_s": PRE_S, "post_s": POST_S, "interval_s": 0.5,
                                "procs_interval_s": 0.5, "families": ["display"]})
    ing = Ingest(tmp_path / "ingest.db", broker.port).start()
    agent = AgentProc(write_config(tmp_path, cfg), tmp_path / "agent.log").start()
    spinners: list[subprocess.Popen[bytes]] = []
    try:
        agent.wait_log("display source framebuffer up", 10)
        changed = clock_ticks(xvfb)
        wait_for(changed, 10, "the clock window")
        agent.wait_log("HMI process bb-hmi", 5)
        time.sleep(PRE_S - SPIKE_BEFORE_S)                 # the ring fills with quiet context first
        spike_wall = time.time()
        spinners = [subprocess.Popen([sys.executable, "-c", SPINNER]) for _ in range(2)]
        time.sleep(SPIKE_BEFORE_S - 0.6)
        for s in spinners:  # reaped as a parent would: a zombie's ticks would show again at later scans
            s.wait(10)
        changed()
        wait_for(changed, 3, "the next tick")              # stop right after a tick: the freeze starts here
        hmi.send_signal(signal.SIGSTOP)
        agent.wait_log("display.freeze began", 8)
        rows = ing.wait_for("SELECT kind, episode, t, fields FROM records WHERE name IN ('display.freeze', "
                            "'blackbox.snapshot') ORDER BY t", lambda r: {x[0] for x in r} >= {"begin", "snapshot"},
                            20)
        hmi.send_signal(signal.SIGCONT)
    finally:
        for s in spinners:
            s.wait(10)
        stop_client(hmi)
        assert agent.stop() == 0
        ing.stop()
    begin = next(r for r in rows if r[0] == "begin")
    snap = next(r for r in rows if r[0] == "snapshot")
    b, d = json.loads(begin[3]), json.loads(snap[3])
    assert snap[1] == begin[1], "the snapshot is linked to the freeze episode"
    # Stamped at the freeze's start (the BEGIN comes detected_after_s later), covering pre_s before and post_s
    # after it on one time base.
    assert abs(snap[2] - (begin[2] - b["detected_after_s"])) < 0.002
    assert (d["trigger"], d["pre_s"], d["post_s"], d["complete"]) == ("display.freeze", PRE_S, POST_S, True)
    assert d["base_ms"] == round((snap[2] - PRE_S) * 1000)
    t = d["system"]["t"]
    assert t[0] <= 600 and t[-1] >= (PRE_S + POST_S) * 1000 - 600 and t == sorted(t)
    assert all(0 <= x <= (PRE_S + POST_S) * 1000 for x in t)
    assert len(d["system"]["cpu0"]) == len(t) and {"mem", "load1", "avail_mib"} <= set(d["system"])
    # The spike, where it was injected: our named spinners top the process columns there, and the CPU series
    # peaks there (host load elsewhere can only raise the rest, never hide a 2-core busy loop).
    spike_ms = spike_wall * 1000 - d["base_ms"]
    assert abs(spike_ms - (PRE_S - SPIKE_BEFORE_S) * 1000) < 1500, spike_ms
    procs = d["procs"]
    seen = [pt for pt, top in zip(procs["t"], expand(procs["top"]), strict=True)
            if any(name == "icvq-spike" for name, _ in top)]
    assert seen and all(spike_ms <= pt <= spike_ms + (SPIKE_S + 1.5) * 1000 for pt in seen), (spike_ms, procs)
    during = [c for pt, c in zip(t, d["system"]["cpu"], strict=True)
              if c is not None and spike_ms + 400 <= pt <= spike_ms + SPIKE_S * 1000 + 600]
    assert during and max(during) >= 90, (spike_ms, t, d["system"]["cpu"])
    # The display channel saw the picture stop: its age grows after T.
    disp = d["display"]
    after = [a for pt, a in zip(disp["t"], disp["frame_age_s"], strict=True) if pt >= PRE_S * 1000 + 1000 and a]
    assert after and max(after) >= 1.0
