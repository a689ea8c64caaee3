"""The modem through ModemManager's `mmcli -J` (the command path is configurable, so tests use a script
that prints canned JSON). mmcli prints every value as a string and "--" for "not known"."""

from __future__ import annotations

import json
import logging
import subprocess
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ...counters import Counters
from ...dataclass_shared import dataclass
from ...errors import Malformed, ProbeError
from .sample import ModemReading

# Registered for packet data (MMModem3gppRegistrationState nicknames); sms-only/emergency carry no data.
REGISTERED = {"home", "roaming", "home-csfb-not-preferred", "roaming-csfb-not-preferred"}
# Without a registration state, the generic modem state still tells whether it is on a network.
ON_NETWORK = {"registered", "connecting", "connected", "disconnecting"}


def _get(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(key)
    return obj


def _text(v: Any) -> str | None:
    if v is None or v == "--" or v == "":
        return None
    if not isinstance(v, str):
        raise Malformed(f"expected a string, got {type(v).__name__}")
    return v


def _num(v: Any) -> float | None:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    t = _text(v)
    if t is None:
        return None
    try:
        return float(t)
    except ValueError:
        raise Malformed(f"not a number: {t[:20]!r}") from None


def _load(text: str) -> Mapping[str, Any]:
    try:
        obj = json.loads(text)
    except ValueError:
        raise Malformed("not JSON") from None
    modem = _get(obj, "modem")
    if not isinstance(modem, Mapping):
        raise Malformed("no 'modem' object")
    return modem


def parse_modem(text: str) -> ModemReading:
    """`mmcli -m X -J`: registration, packet service, access technologies, operator."""
    m = _load(text)
    state = _text(_get(m, "generic", "state"))
    reg = _text(_get(m, "3gpp", "registration-state"))
    pss = _text(_get(m, "3gpp", "packet-service-state"))  # ModemManager >= 1.20
    techs = _get(m, "generic", "access-technologies")
    if techs is not None and not (isinstance(techs, list) and all(isinstance(t, str) for t in techs)):
        raise Malformed("access-technologies is not a list of strings")
    registered = reg in REGISTERED if reg else (state in ON_NETWORK if state else None)
    if pss in ("attached", "detached"):
        attached: bool | None = pss == "attached"
    else:
        attached = state == "connected" if state else None
    tech = "+".join(t for t in techs if t != "--") if techs else None
    return ModemReading(reg=reg or state, registered=registered, attached=attached,
                        tech=(tech or None) if registered else None,
                        operator=_text(_get(m, "3gpp", "operator-name")) if registered else None)


@dataclass(frozen=True)
class Signal:
    known: bool
    rsrp: float | None = None
    rsrq: float | None = None
    rssi: float | None = None
    snr: float | None = None
    nr_rsrp: float | None = None
    nr_rsrq: float | None = None
    nr_snr: float | None = None


def parse_signal(text: str) -> Signal:
    """`mmcli -m X --signal-get -J`: modem.signal.lte.{rsrp,rsrq,rssi,snr}, modem.signal.5g.{rsrp,rsrq,snr}."""
    sig = _get(_load(text), "signal")
    if not isinstance(sig, Mapping):
        raise Malformed("no 'signal' object")
    lte, nr = _get(sig, "lte"), _get(sig, "5g")
    if not isinstance(lte, Mapping) and not isinstance(nr, Mapping):
        return Signal(known=False)
    umts_rssi = _num(_get(sig, "umts", "rssi")) if isinstance(_get(sig, "umts"), Mapping) else None
    return Signal(known=True, rsrp=_num(_get(lte, "rsrp")), rsrq=_num(_get(lte, "rsrq")),
                  rssi=_num(_get(lte, "rssi")) if _get(lte, "rssi") not in (None, "--") else umts_rssi,
                  snr=_num(_get(lte, "snr")), nr_rsrp=_num(_get(nr, "rsrp")), nr_rsrq=_num(_get(nr, "rsrq")),
                  nr_snr=_num(_get(nr, "snr")))


class Mmcli:
    def __init__(self, cmd: str, modem: str, timeout_s: float, refresh_s: int, counters: Counters,
                 log: logging.Logger | None = None) -> None:
        self.cmd = cmd
        self.modem = modem
        self.timeout_s = timeout_s
        self.refresh_s = refresh_s
        self.counters = counters
        self.log = log or logging.getLogger("icvq.probe.link")
        self._setup_done = refresh_s == 0

    def _run(self, *args: str) -> str:
        try:
            p = subprocess.run([self.cmd, "-m", self.modem, *args], capture_output=True, text=True,
                               timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise ProbeError(f"mmcli {' '.join(args)} timed out after {self.timeout_s} s") from None
        except OSError as e:
            raise ProbeError(f"cannot run {self.cmd}: {e.strerror}") from None
        if p.returncode != 0:
            raise ProbeError(f"mmcli {' '.join(args)} exited {p.returncode}: {p.stderr.strip()[:200]}")
        return p.stdout

    def close(self) -> None:
        pass

    def read(self) -> ModemReading:
        if not self._setup_done:
            # Extended signal values stay "--" until polling is set up; ModemManager forgets it on restart,
            # so a failure is retried on the next read.
            try:
                self._run(f"--signal-setup={self.refresh_s}")
                self._setup_done = True
            except ProbeError:
                self.counters.inc("mmcli_signal_setup_failed")
        try:
            reading = parse_modem(self._run("-J"))
        except Malformed:
            self.counters.inc("malformed_mmcli")
            raise ProbeError("mmcli -J printed something that is not a modem") from None
        try:
            sig = parse_signal(self._run("--signal-get", "-J"))
        except Malformed:
            self.counters.inc("malformed_mmcli")
            sig = Signal(known=False)
        except ProbeError:
            self.counters.inc("mmcli_signal_failed")
            sig = Signal(known=False)
        return replace(reading, signal_known=sig.known, rsrp=sig.rsrp, rsrq=sig.rsrq, rssi=sig.rssi, snr=sig.snr,
                       nr_rsrp=sig.nr_rsrp, nr_rsrq=sig.nr_rsrq, nr_snr=sig.nr_snr)
