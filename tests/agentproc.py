"""Run the real daemon as a subprocess with a config the test writes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tools.tomlw import to_toml, toml_value

REPO = Path(__file__).resolve().parents[1]

__all__ = ["REPO", "AgentProc", "base_config", "to_toml", "toml_value", "write_config"]


def base_config(tmp: Path, port: int, **sections: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cfg: dict[str, dict[str, Any]] = {
        "vehicle": {"id": "VIN0001", "device": "hu", "fleet": "test"},
        "uplink": {"host": "127.0.0.1", "port": port, "keepalive_s": 5, "batch_linger_s": 0.5,
                   "backoff_min_s": 0.2, "backoff_max_s": 1.0, "reconnect_probe_s": 0.5},
        "spool": {"path": str(tmp / "spool.db"), "commit_interval_s": 0.2},
        "history": {"path": str(tmp / "history.db")},
        "control": {"socket": str(tmp / "control.sock"), "group": ""},
        "agent": {"nice": 0, "io_idle": False, "health_interval_s": 5},
        "probes.system": {"interval_s": 0.5},
    }
    for k, v in sections.items():
        cfg.setdefault(k.replace("__", "."), {}).update(v)
    return cfg


def write_config(tmp: Path, cfg: dict[str, dict[str, Any]]) -> Path:
    p = tmp / "agent.toml"
    p.write_text(to_toml(cfg))
    return p


class AgentProc:
    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log = log
        self.env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_started: bool = True) -> AgentProc:
        logf = self.log.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "agent", "--config", str(self.config),
                                      "--log-level", "debug"], stdout=logf, stderr=logf, env=self.env,
                                     cwd=str(REPO))
        if wait_started:
            self.wait_log("icvq-agent 0.1.0 started", 20)
        return self

    def wait_log(self, text: str, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in self.log.read_text(errors="replace"):
                return
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(f"agent exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.05)
        raise TimeoutError(f"{text!r} not in agent log:\n{self.log.read_text()[-3000:]}")

    def stop(self, timeout_s: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class NotifySocket:
    """A NOTIFY_SOCKET as systemd offers it: collects what the agent sends (READY=1, STATUS=..., WATCHDOG=1),
    each datagram with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                continue

    def lines(self) -> list[str]:
        return [line for _, m in self.messages for line in m.split("\n")]

    def status(self) -> str:
        """The last STATUS= text, what `systemctl status` shows now."""
        return next((ln[7:] for ln in reversed(self.lines()) if ln.startswith("STATUS=")), "")

    def wait(self, text: str, timeout_s: float = 15.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines()):
                return
            time.sleep(0.05)
        raise TimeoutError(f"{text!r} never notified; got {self.lines()}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
