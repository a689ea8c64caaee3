"""A simulated cellular modem: an AT command server on a pty, and canned `mmcli -J` output.

Both render the same ModemPoint, so a scenario plays identically through either probe backend. The pty
slave path is opened by the probe like any /dev/ttyUSBx.
"""

from __future__ import annotations

import json
import os
import select
import threading
import tty
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# 3GPP registration <stat> values and ModemManager's names for them.
REG_NAMES = {0: "idle", 1: "home", 2: "searching", 3: "denied", 4: "unknown", 5: "roaming"}
ACT_NAMES = {0: "gsm", 2: "umts", 7: "lte", 11: "5gnr", 13: "lte"}


@dataclass(frozen=True)
class ModemPoint:
    rsrp: float | None = -85.0
    rsrq: float | None = -9.0
    rssi: float | None = -57.0
    snr: float | None = 14.0
    reg: int = 1
    attached: bool = True
    act: int = 7
    operator: str = "Sim Telecom"

    @property
    def registered(self) -> bool:
        return self.reg in (1, 5)


def _idx(v: float | None, base: float, step: float, hi: int, unknown: int) -> int:
    if v is None:
        return unknown
    return max(0, min(hi, round((v - base) / step)))


def at_answer(cmd: str, p: ModemPoint) -> list[str] | None:
    """Information lines for one command (27.007 formats); None = ERROR."""
    c = cmd.strip().upper()
    if c in ("AT", "ATE0", "ATE1"):
        return []
    if c == "AT+CESQ":
        return [f"+CESQ: 99,99,255,255,{_idx(p.rsrq, -20, 0.5, 34, 255)},{_idx(p.rsrp, -141, 1, 97, 255)}"]
    if c == "AT+CSQ":
        return [f"+CSQ: {_idx(p.rssi, -113, 2, 31, 99)},99"]
    if c in ("AT+CEREG?", "AT+CREG?"):
        return [f"{c[2:-1]}: 0,{p.reg}"]
    if c == "AT+COPS?":
        return [f'+COPS: 0,0,"{p.operator}",{p.act}'] if p.registered else ["+COPS: 0"]
    if c == "AT+CGATT?":
        return [f"+CGATT: {int(p.attached)}"]
    return None  # e.g. AT+C5GREG? on an LTE-only module


def mmcli_modem(p: ModemPoint) -> dict[str, Any]:
    state = "connected" if p.attached and p.registered else "registered" if p.registered else "searching"
    return {"modem": {
        "generic": {"state": state, "access-technologies": [ACT_NAMES.get(p.act, "lte")] if p.registered else [],
                    "signal-quality": {"recent": "yes", "value": str(_idx(p.rssi, -113, 2, 31, 0) * 100 // 31)},
                    "manufacturer": "Sim", "model": "SIM-LTE"},
        "3gpp": {"registration-state": REG_NAMES.get(p.reg, "unknown"),
                 "packet-service-state": "attached" if p.attached else "detached",
                 "operator-name": p.operator if p.registered else "--"}}}


def mmcli_signal(p: ModemPoint) -> dict[str, Any]:
    def s(v: float | None) -> str:
        return "--" if v is None else f"{v:.2f}"

    return {"modem": {"signal": {
        "refresh": {"rate": "5"},
        "lte": {"rsrp": s(p.rsrp), "rsrq": s(p.rsrq), "rssi": s(p.rssi), "snr": s(p.snr), "error-rate": "--"},
        "5g": {"rsrp": "--", "rsrq": "--", "snr": "--", "error-rate": "--"},
        "umts": {"rssi": "--", "rscp": "--", "ecio": "--", "error-rate": "--"}}}}


MMCLI_SCRIPT = """#!/bin/sh
# Canned mmcli for tests: prints the JSON files the simulator keeps next to this script.
d=$(dirname "$0")
case "$*" in
  *--signal-setup*) exit 0 ;;
  *--signal-get*) exec cat "$d/signal.json" ;;
  *-J*) exec cat "$d/modem.json" ;;
  *) echo "error: unsupported" >&2; exit 1 ;;
esac
"""


class MmcliStub:
    """`path` is an executable that behaves like `mmcli -m any [-J | --signal-get -J | --signal-setup=N]`."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.dir = workdir
        self.path = workdir / "mmcli"
        self.path.write_text(MMCLI_SCRIPT)
        self.path.chmod(0o755)
        self._last: ModemPoint | None = None

    def _write(self, name: str, text: str) -> None:
        tmp = self.dir / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.dir / name)  # atomic: the probe never reads half a file

    def update(self, p: ModemPoint) -> None:
        if p != self._last:
            self._write("modem.json", json.dumps(mmcli_modem(p)))
            self._write("signal.json", json.dumps(mmcli_signal(p)))
            self._last = p

    def write_raw(self, modem: str, signal: str) -> None:
        """Arbitrary text (garbage tests)."""
        self._write("modem.json", modem)
        self._write("signal.json", signal)
        self._last = None


class AtModemSim:
    """Answers AT commands on a pty from `state()` at the moment of asking. `noise_every` > 0 sends a garbage
    line and an unsolicited +CEREG every that many answers (the probe must count and skip them)."""

    def __init__(self, state: Callable[[], ModemPoint], *, noise_every: int = 0, mute: bool = False) -> None:
        self.state = state
        self.noise_every = noise_every
        self.mute = mute  # a hung modem: reads but never answers
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)  # no echo, no CR/LF translation: bytes as a UART would carry them
        self.path = os.ttyname(self.slave)
        self.answered = 0
        self._echo = True
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="at-modem-sim", daemon=True)

    def start(self) -> AtModemSim:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def _send(self, text: str) -> None:
        try:
            os.write(self.master, text.encode("latin-1"))
        except OSError:
            pass

    def _run(self) -> None:
        buf = b""
        while not self._stop.is_set():
            if not select.select([self.master], [], [], 0.1)[0]:
                continue
            try:
                buf += os.read(self.master, 4096)
            except OSError:
                continue
            while b"\r" in buf:
                raw, buf = buf.split(b"\r", 1)
                cmd = raw.decode("ascii", errors="replace").strip()
                if cmd:
                    self._answer(cmd)

    def _answer(self, cmd: str) -> None:
        if self.mute:
            return
        if self._echo:
            self._send(cmd + "\r\n")
        if cmd.upper() in ("ATE0", "ATE1"):
            self._echo = cmd.upper() == "ATE1"
        self.answered += 1
        if self.noise_every and self.answered % self.noise_every == 0:
            self._send("\r\n+CEREG: 1\r\n\r\n\x00\xff\xfe garbage +CESQ: x,y\r\n+CSQ: 77,zz\r\n")
        lines = at_answer(cmd, self.state())
        if lines is None:
            self._send("\r\nERROR\r\n")
            return
        self._send("".join(f"\r\n{line}\r\n" for line in lines) + "\r\nOK\r\n")
