"""Screen freeze on a simulated head unit: a real Xvfb keeps its screen in an mmappable XWD file, a full-screen
`xclock -digital -update 1` plays the HMI, and once during the demo the "HMI" is stopped (SIGSTOP) for 8 s.

The Xvfb helpers are also what tests/display uses for its real-parts tests.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TITLE = "screen freeze on a simulated head unit (Xvfb + xclock; the HMI stops for 8 s)"
EXPECT = ["display.freeze"]

MAKE_DEPS = "run `make deps` (installs tools/deps/apt-display.txt: xvfb, x11-apps)"
# Where `xclock -digital` draws its text in a window at +0+0: the seconds change every second in there.
CLOCK_REGION: dict[str, Any] = {"name": "clock", "x": 0, "y": 0, "width": 240, "height": 40,
                                "expected_period_s": 1.0}
FREEZE_S = 8.0


class MissingTool(RuntimeError):
    pass


def need(binary: str) -> str:
    path = shutil.which(binary)
    if not path:
        raise MissingTool(f"{binary} not found: {MAKE_DEPS}")
    return path


class Xvfb:
    """`Xvfb -fbdir DIR` on a display number it picks itself (-displayfd), black root window (-br)."""

    def __init__(self, fbdir: Path, width: int = 1280, height: int = 720) -> None:
        self.fbdir = fbdir
        self.width = width
        self.height = height
        self.proc: subprocess.Popen[bytes] | None = None
        self.display = ""
        self._displayfd = -1

    @property
    def fb_path(self) -> Path:
        return self.fbdir / "Xvfb_screen0"

    def start(self, timeout_s: float = 15.0) -> Xvfb:
        exe = need("Xvfb")
        self.fbdir.mkdir(parents=True, exist_ok=True)
        r, w = os.pipe()
        log = (self.fbdir / "xvfb.log").open("ab")
        try:
            self.proc = subprocess.Popen(
                [exe, "-displayfd", str(w), "-screen", "0", f"{self.width}x{self.height}x24", "-fbdir",
                 str(self.fbdir), "-br", "-nolisten", "tcp", "-nolisten", "unix", "-noreset"],
                pass_fds=(w,), stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        finally:
            os.close(w)
            log.close()
        # Xvfb treats a failed write of its display number as fatal, so the read end stays open until it
        # stops, and we read up to the newline (it may come in two writes).
        self._displayfd = r
        got = b""
        deadline = time.monotonic() + timeout_s
        while not got.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], max(0.0, deadline - time.monotonic()))
            chunk = os.read(r, 32) if ready else b""
            if ready and not chunk:
                break  # Xvfb exited
            got += chunk
        number = got.decode().strip()
        if not number:
            self.stop()
            raise RuntimeError(f"Xvfb did not start: {(self.fbdir / 'xvfb.log').read_text()[-2000:]}")
        self.display = f":{number}"
        deadline = time.monotonic() + timeout_s
        while not self.fb_path.exists() or self.fb_path.stat().st_size < self.width * self.height * 4:
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("Xvfb did not create its framebuffer file")
            time.sleep(0.02)
        return self

    def client(self, *argv: str, name: str = "") -> subprocess.Popen[bytes]:
        """Start an X client on this display; `name` runs it under another process name (a copy of the
        binary), so process watches cannot confuse it with another test's client."""
        exe = need(argv[0])
        if name:
            copy = self.fbdir / name
            if not copy.exists():
                shutil.copy(exe, copy)
            exe = str(copy)
        with (self.fbdir / f"{os.path.basename(exe)}.log").open("ab") as log:
            return subprocess.Popen([exe, *argv[1:]], env={**os.environ, "DISPLAY": self.display},
                                    stdout=log, stderr=log, stdin=subprocess.DEVNULL)

    def xclock(self, name: str = "") -> subprocess.Popen[bytes]:
        """A full-screen digital clock: white screen, the time redrawn every second in CLOCK_REGION."""
        return self.client("xclock", "-digital", "-update", "1", "-geometry", f"{self.width}x{self.height}+0+0",
                           "-strftime", "%H:%M:%S", name=name)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._displayfd >= 0:
            os.close(self._displayfd)
            self._displayfd = -1


def stop_client(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            p.send_signal(signal.SIGCONT)  # a stopped process would not die from SIGTERM until continued
        p.kill()
    p.wait(5)


def display_config(xvfb: Xvfb, workdir: Path, hmi_name: str) -> dict[str, Any]:
    return {"enabled": True, "fb_path": str(xvfb.fb_path), "fb_interval_s": 0.25, "regions": [CLOCK_REGION],
            "hmi_processes": [hmi_name], "sysfs_root": str(workdir / "sys"), "metrics_interval_s": 10.0}


@contextlib.contextmanager
def scenario(workdir: Path, duration_s: float) -> Iterator[dict[str, dict[str, Any]]]:
    xvfb = Xvfb(workdir / "display").start()
    hmi_name = "demo-hmi"
    clock = xvfb.xclock(name=hmi_name)
    done = threading.Event()

    def freeze_once() -> None:
        # Late enough that the agent has seen the clock tick, early enough that the freeze ends in the demo.
        if done.wait(max(4.0, min(duration_s * 0.3, duration_s - FREEZE_S - 4.0))):
            return
        clock.send_signal(signal.SIGSTOP)
        done.wait(FREEZE_S)
        clock.send_signal(signal.SIGCONT)

    t = threading.Thread(target=freeze_once, name="demo-display-freeze", daemon=True)
    t.start()
    try:
        yield {"probes.display": display_config(xvfb, workdir, hmi_name)}
    finally:
        done.set()
        t.join(10)
        stop_client(clock)
        xvfb.stop()
