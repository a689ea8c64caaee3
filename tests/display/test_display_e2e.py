"""The whole loop with real parts: Xvfb + xclock (the HMI) → agent daemon → mosquitto → ingest → SQLite.
The HMI is stopped for 4 s: display.freeze BEGIN and END must arrive with one episode id and its duration.
A GPU hang line replayed through a kmsg FIFO arrives as display.gpu_hang."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from agentproc import AgentProc, base_config, write_config
from display_helpers import clock_ticks, wait_for
from ingest_helper import Ingest

from tools.demo_parts.display import Xvfb, display_config, stop_client

STOP_S = 4.0


def test_freeze_episode_and_gpu_hang_reach_the_backend(tmp_path: Path, broker, xvfb: Xvfb) -> None:
    hmi = xvfb.xclock(name="e2e-hmi")
    kmsg = tmp_path / "kmsg"
    os.mkfifo(kmsg)
    display = {**display_config(xvfb, tmp_path, "e2e-hmi"), "kmsg_path": str(kmsg)}
    cfg = base_config(tmp_path, broker.port, probes__display=display)
    ing = Ingest(tmp_path / "ingest.db", broker.port).start()
    agent = AgentProc(write_config(tmp_path, cfg), tmp_path / "agent.log").start()
    try:
        agent.wait_log("display source framebuffer up", 10)
        agent.wait_log("display source kmsg up", 10)
        changed = clock_ticks(xvfb)
        wait_for(changed, 10, "the clock window")          # (its first change may be the window appearing)
        changed()
        wait_for(changed, 3, "the clock to tick")
        agent.wait_log("HMI process e2e-hmi", 5)           # the agent has found the HMI process
        time.sleep(1.0)                                     # and sampled the ticking clock
        changed()
        wait_for(changed, 3, "the next tick")              # stop right after a tick
        hmi.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        fd = os.open(kmsg, os.O_WRONLY | os.O_NONBLOCK)
        os.write(fd, b"3,5001,912345678,-;[drm:drm_atomic_helper_wait_for_flip_done [drm_kms_helper]] "
                     b"*ERROR* [CRTC:51:crtc-0] flip_done timed out\n")
        os.close(fd)
        agent.wait_log("display.freeze began", 6)
        time.sleep(max(0.0, STOP_S - (time.monotonic() - stopped)))
        hmi.send_signal(signal.SIGCONT)
        rows = ing.wait_for("SELECT kind, episode, fields FROM records WHERE name = 'display.freeze' ORDER BY t",
                            lambda r: len(r) >= 2, 20)
        hangs = ing.wait_for("SELECT fields FROM records WHERE name = 'display.gpu_hang'", lambda r: len(r) >= 1)
    finally:
        stop_client(hmi)
        assert agent.stop() == 0
        ing.stop()
    (b_kind, b_ep, b_fields), (e_kind, e_ep, e_fields) = rows[:2]
    begin, end = json.loads(b_fields), json.loads(e_fields)
    assert (b_kind, e_kind) == ("begin", "end") and b_ep == e_ep and b_ep is not None
    assert begin["cause"] in ("hmi_stopped", "gpu_hang") and begin["detected_after_s"] >= 2.0
    # The HMI process is stopped and the kernel logged a flip_done timeout: the GPU hang is the more specific
    # explanation, and both stand in the evidence.
    assert end["cause"] == "gpu_hang" and {"hmi_stopped", "gpu_hang"} & set(end["causes"])
    assert {"region", "process", "kmsg"} <= set(end["signals"])
    # Start and end are each seen within one 0.25 s sampling interval (plus the agent's scheduling under load).
    assert abs(end["duration_s"] - STOP_S) <= 2 * 0.25 + 0.25, end
    assert json.loads(hangs[0][0])["driver"] == "drm"
