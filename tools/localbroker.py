"""A real mosquitto on a free loopback port, for tests (kill it to make outages) and for `make demo`."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), 0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s} s")


class Mosquitto:
    def __init__(self, workdir: Path, port: int | None = None, extra_conf: str = "", persistent: bool = True) -> None:
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if exe is None:
            raise RuntimeError("mosquitto is not installed: run `make deps` (apt-get install mosquitto)")
        self.exe = exe
        self.port = port or free_port()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.extra_conf = extra_conf
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None

    def write_conf(self) -> None:
        body = self.extra_conf or f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
        # Persistent sessions, saved every second, so a subscriber's queue survives a broker restart the way
        # a production broker's does; a SIGKILL still loses what arrived in the last second.
        persist = (f"persistence true\npersistence_location {self.workdir}/\nautosave_interval 1\n"
                   if self.persistent else "persistence false\n")
        # As root mosquitto would switch to its own user and then fail to read the test's files.
        self.conf.write_text(f"user root\n{persist}log_dest stderr\n{body}")

    def start(self) -> Mosquitto:
        self.write_conf()
        logf = self.log.open("ab")
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=logf, stderr=logf)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
