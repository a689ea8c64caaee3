"""Runs inside the tools/vm guest (root, real bochs-display KMS device): the DRM scanout helper, weston on its DRM
backend, weston-simple-shm as the HMI and the display probe on the DRM source, through every scenario in one boot.
Prints one `ICVQ-DRM-RESULT {json}` line: the probe's records, the scenario timestamps, and what the helper
sampled at each moment the host took a QMP screendump (test_display_drm_vm.py compares them).

Usage: python -m tools.drm_guest SHARED_DIR   (a host directory shared read-write; screendump requests go there)

Used by tests/display/test_display_drm_vm.py and `python -m tools.demo drm` (tools/demo_drm.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from agent.clock import SystemClock
from agent.probe import ProbeContext
from agent.probes.display import Config, DisplayProbe
from agent.probes.display.drm import PropertyNames, fourcc, mapped, open_card, primary_planes, scanout_fb
from agent.probes.display.drm_source import ScanoutClient
from agent.probes.display.framebuffer import Rect
from agent.records import Record
from agent.schema import build

MARK = "ICVQ-DRM-RESULT "
CARD = "/dev/dri/card0"
SOCK = "/run/icvq-drm/sampler.sock"
XDG = "/run/xdg"
FB_INTERVAL_S = 0.25
BACKGROUND = (0x20, 0x40, 0x80)
WESTON_INI = """\
[core]
require-input=false
idle-time=0

[shell]
background-color=0xff204080
panel-position=none
locking=false
animation=none
startup-animation=none
close-animation=none
focus-animation=none
"""
# The dark-themed HMI: weston's own terminal, fullscreen, black, showing only a clock that ticks every second.
# While THIN_FLAG exists it shows, in the clock's place, lower-case letters that change every second instead: their
# pixels (rows 13-19 of the first line) all lie between the grid's rows (y = 10 and 31 on 1024 x 768), the time
# digits reach up to row 10 and are hit by it at most times of day. Same length, so each text overwrites the other.
THIN_TEXT = ("oxoxoxox", "xoxoxoxo")
CLOCK_SH = ("#!/bin/sh\nprintf '\\033[?25l'; i=0\nwhile :; do\n"
            "  if [ -e \"$(dirname \"$0\")/thin\" ]; then i=$((1 - i)); "
            f"if [ $i = 0 ]; then t={THIN_TEXT[0]}; else t={THIN_TEXT[1]}; fi\n"
            "  else t=$(date +%T); fi\n  printf '\\033[H %s' \"$t\"; sleep 1\ndone\n")
CLOCK_REGION: dict[str, Any] = {"name": "clock", "x": 0, "y": 0, "width": 120, "height": 24, "expected_period_s": 1.0}

T0 = time.monotonic()
shared = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp")
marks: dict[str, float] = {}
dumps: dict[str, dict[str, Any]] = {}


def log(msg: str) -> None:
    print(f"[guest {time.monotonic() - T0:6.2f}] {msg}", flush=True)


def now() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)  # the probe's clock (agent.clock.SystemClock.mono)


def mark(name: str) -> None:
    marks[name] = now()
    log(name)


def wait_for(pred: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def screendump(name: str, client: ScanoutClient) -> None:
    """The helper's sample right before and after qemu's own screendump of the same moment."""
    before = client.sample()
    (shared / f"req-{name}.tmp").write_text("")
    os.rename(shared / f"req-{name}.tmp", shared / f"req-{name}")
    wait_for(lambda: (shared / f"ack-{name}").exists(), 20, f"screendump {name}")
    after = client.sample()
    dumps[name] = {"t": now(), "before": sample_dict(before), "after": sample_dict(after),
                   "regions": [[r.x, r.y, r.width, r.height] for r in client.regions]}


def sample_dict(s: Any) -> dict[str, Any]:
    return {"grid": s.grid, "regions": list(s.regions), "lit": s.bright_fraction, "black": s.black,
            "region_lit": list(s.region_lit), "trace_lit": s.trace_lit}


def start_weston() -> subprocess.Popen[bytes]:
    p = subprocess.Popen(["weston", "--tty=2", "--backend=drm-backend.so", "--use-pixman",
                          f"--config={XDG}/weston.ini", f"--log={XDG}/weston.log"], env=wl_env())
    wait_for(lambda: Path(XDG, "wayland-1").exists(), 30, "the weston socket")
    return p


def wl_env() -> dict[str, str]:
    return {**os.environ, "XDG_RUNTIME_DIR": XDG, "WAYLAND_DISPLAY": "wayland-1"}


def scanout_bytes() -> tuple[int, int, int, bytes]:
    """The whole scanout as the test (root) sees it: for locating the HMI window only."""
    fd = open_card(CARD)
    try:
        plane = next(p for p in primary_planes(fd, PropertyNames()) if p.crtc_id)
        fb = scanout_fb(fd, plane.fb_id)
        assert fourcc(fb.pixel_format) in ("XR24", "AR24")
        with mapped(fd, fb) as mm:
            return fb.width, fb.height, fb.pitch, bytes(mm[fb.offset:fb.offset + fb.pitch * fb.height])
    finally:
        os.close(fd)


def window_box() -> Rect | None:
    """Bounding box of what is not the background colour, on an 8-pixel lattice; None until weston shows its
    background with a window on it (before that the console is scanned out)."""
    w, h, pitch, data = scanout_bytes()
    bg = bytes((BACKGROUND[2], BACKGROUND[1], BACKGROUND[0]))
    xs, ys, n = [], [], 0
    for y in range(0, h, 8):
        row = data[y * pitch:(y + 1) * pitch]
        for x in range(0, w, 8):
            n += 1
            if row[4 * x:4 * x + 3] != bg:
                xs.append(x)
                ys.append(y)
    if not xs or len(xs) > n // 2:
        return None
    return Rect(min(xs), min(ys), max(xs) - min(xs) + 8, max(ys) - min(ys) + 8)


class Probe:
    def __init__(self, **cfg: Any) -> None:
        self.records: list[Record] = []
        table = {"enabled": True, "drm_card": CARD, "drm_sampler_socket": SOCK, "fb_interval_s": FB_INTERVAL_S,
                 "process_interval_s": 0.25, "sysfs_root": "/sys", **cfg}
        self.probe = DisplayProbe(build(Config, table, path="probes.display"),
                                  ProbeContext(clock=SystemClock(), emit=self.records.append))
        self.probe.start()

    def stop(self) -> list[dict[str, Any]]:
        self.probe.stop()
        return [{"name": r.name, "kind": r.kind.name.lower(), "episode": r.episode, "mono": r.mono_ms / 1000,
                 "data": r.data} for r in self.records]


def lit_state(p: Probe, name: str) -> dict[str, Any]:
    """What the probe's frame tracker last saw: grid lit share, the helper's trace, since when dark."""
    fb = p.probe.fb
    return {f"{name}_lit": fb.lit_fraction if fb else None, f"{name}_trace_lit": fb.trace_lit if fb else None,
            f"{name}_dark_since": fb.dark_since if fb else None}


def main() -> None:
    os.makedirs(XDG, mode=0o700, exist_ok=True)
    Path(XDG, "weston.ini").write_text(WESTON_INI)
    Path(XDG, "clock.sh").write_text(CLOCK_SH)
    os.chmod(Path(XDG, "clock.sh"), 0o755)  # weston-terminal execs it
    os.makedirs(os.path.dirname(SOCK), exist_ok=True)
    helper = subprocess.Popen([sys.executable, "-m", "agent.probes.display.scanout_helper", "--card", CARD,
                               "--socket", SOCK])
    wait_for(lambda: Path(SOCK).exists(), 30, "the sampler helper's socket")
    weston = start_weston()
    mark("weston_up")
    hmi = subprocess.Popen(["weston-simple-shm"], env=wl_env())
    wait_for(lambda: window_box() is not None, 30, "the simple-shm window")
    box = window_box()
    assert box is not None
    # The middle of the window: its animation covers it, its edges may be the compositor's.
    region: dict[str, Any] = {"name": "hmi", "x": box.x + box.width // 4, "y": box.y + box.height // 4,
              "width": box.width // 2, "height": box.height // 2, "expected_period_s": 0.5}
    log(f"simple-shm window at {box}, region {region}")
    client = ScanoutClient(SOCK, regions=(Rect(region["x"], region["y"], region["width"], region["height"]),))
    p1 = Probe(regions=[region], hmi_processes=["weston-simple-shm"])
    wait_for(lambda: p1.probe.status().get("hmi", {}).get("weston-simple-shm") == "ok", 20, "the HMI seen running")
    time.sleep(2.0)
    screendump("live", client)

    # A: the HMI stops (SIGSTOP) for 4 s.
    hmi.send_signal(signal.SIGSTOP)
    mark("hmi_stopped")
    time.sleep(2.5)
    screendump("stopped", client)
    time.sleep(max(0.0, 4.0 - (now() - marks["hmi_stopped"])))
    hmi.send_signal(signal.SIGCONT)
    mark("hmi_continued")
    time.sleep(2.5)

    # B: the HMI is killed: weston's bare background.
    hmi.kill()
    hmi.wait()
    mark("hmi_killed")
    time.sleep(3.0)
    screendump("bare", client)
    time.sleep(1.0)

    # C: the compositor is killed: the console's framebuffer, black.
    weston.terminate()
    weston.wait()
    mark("weston_killed")
    time.sleep(4.0)
    screendump("console", client)
    records1 = p1.stop()
    mark("phase1_end")

    # D: a dark-themed HMI with a ticking clock.
    for f in ("wayland-1", "wayland-1.lock"):
        Path(XDG, f).unlink(missing_ok=True)
    weston = start_weston()
    term = subprocess.Popen(["weston-terminal", "--fullscreen", f"--shell={XDG}/clock.sh"], env=wl_env())
    clock_rect = Rect(CLOCK_REGION["x"], CLOCK_REGION["y"], CLOCK_REGION["width"], CLOCK_REGION["height"])
    dark = ScanoutClient(SOCK, regions=(clock_rect,))

    def clock_shown() -> bool:
        s = dark.sample()
        return s.black and (s.region_lit[0] or 0) > 0.02
    wait_for(clock_shown, 40, "the dark terminal with its clock")
    p2 = Probe(regions=[CLOCK_REGION], hmi_processes=["weston-terminal"])
    mark("dark_start")
    time.sleep(3.0)
    screendump("dark1", dark)
    time.sleep(1.5)
    screendump("dark2", dark)
    time.sleep(3.0)
    fb = p2.probe.fb
    dark_state = {"dark_since": fb.dark_since if fb else None, "black_since": fb.black_since if fb else None,
                  "lit": fb.lit_fraction if fb else None, "region_lit": list(fb.region_lit) if fb else []}
    mark("dark_end")
    records2 = p2.stop()
    # The same dark UI with no region configured: only the DRM flip rule tells it from a black screen (its small
    # clock sits under a grid point or two that stay lit from digit to digit).
    p3 = Probe(hmi_processes=["weston-terminal"])
    time.sleep(6.0)
    dark_state.update(lit_state(p3, "noregion"))
    records3 = p3.stop()
    # The same, with text whose every lit pixel lies between grid points: only the helper's whole-row trace sees it.
    Path(XDG, "thin").write_text("")
    thin = ScanoutClient(SOCK)
    wait_for(lambda: thin.sample().trace_lit, 10, "the thin text between grid points")
    p4 = Probe(hmi_processes=["weston-terminal"])
    mark("thin_start")
    time.sleep(3.0)
    screendump("thin", thin)
    time.sleep(3.0)
    dark_state.update(lit_state(p4, "thin"))
    records4 = p4.stop()
    term.kill()
    weston.terminate()
    weston.wait()
    helper.terminate()
    helper.wait()
    print(MARK + json.dumps({"marks": marks, "dumps": dumps, "phase1": records1, "phase2": records2,
                             "phase2_noregion": records3, "phase2_thin": records4, "dark_state": dark_state,
                             "region": region}), flush=True)


if __name__ == "__main__":
    main()
