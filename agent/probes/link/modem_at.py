"""The modem through an AT port (3GPP TS 27.007): signal, registration, operator, packet attach.

Parsers are pure and raise `Malformed`; the port counts what it cannot use and goes on. The port must be
ours alone (ModemManager keeps its own ports; use an extra one, e.g. /dev/ttyUSB2 on Quectel/Sierra modules).
"""

from __future__ import annotations

import csv
import functools
import logging
import os
import select
import termios
import time
import tty
from collections.abc import Callable
from typing import TypeVar

from ...counters import Counters
from ...dataclass_shared import dataclass
from ...errors import Malformed
from .sample import ModemReading

T = TypeVar("T")


class Unsolicited(Malformed):
    """An unsolicited result code where an answer was expected: skipped, not an error."""


class AtError(Exception):
    """The modem answered ERROR / +CME ERROR (the command is not supported or not possible now)."""


REG_WORDS = {0: "idle", 1: "home", 2: "searching", 3: "denied", 4: "unknown", 5: "roaming", 6: "home-sms-only",
             7: "roaming-sms-only", 8: "emergency-only", 9: "home-csfb-not-preferred",
             10: "roaming-csfb-not-preferred", 11: "attached-rlos"}
# Registered for packet data: SMS-only and emergency registrations carry no data.
REG_DATA = {1, 5, 9, 10}
# +COPS AcT → technology words as ModemManager names them.
ACT = {0: "gsm", 1: "gsm", 2: "umts", 3: "gsm", 4: "umts", 5: "umts", 6: "umts", 7: "lte", 8: "gsm", 9: "lte",
       10: "lte", 11: "5gnr", 12: "5gnr", 13: "lte+5gnr"}


def _payload(line: str, prefix: str) -> str:
    if not line.startswith(prefix + ":"):
        raise Malformed(f"expected {prefix}: got {line[:40]!r}")
    return line[len(prefix) + 1:].strip()


def _tokens(payload: str) -> list[str]:
    """Comma-separated fields; quoted strings may contain commas."""
    try:
        return [t.strip() for t in next(csv.reader([payload], skipinitialspace=True), [])]
    except csv.Error:
        raise Malformed(f"bad quoting in {payload[:40]!r}") from None


def _ints(payload: str, n_min: int) -> list[int]:
    parts = [p.strip() for p in payload.split(",")]
    if len(parts) < n_min:
        raise Malformed(f"expected at least {n_min} fields, got {payload[:40]!r}")
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise Malformed(f"non-numeric field in {payload[:40]!r}") from None


def _scaled(n: int, hi: int, base: float, step: float) -> float | None:
    if n == 255:
        return None
    if not 0 <= n <= hi:
        raise Malformed(f"value {n} out of range 0..{hi}")
    return base + step * n


@dataclass(frozen=True)
class Cesq:
    rsrq: float | None
    rsrp: float | None
    nr_rsrq: float | None = None
    nr_rsrp: float | None = None
    nr_snr: float | None = None


def parse_cesq(line: str) -> Cesq:
    """+CESQ: rxlev,ber,rscp,ecno,rsrq,rsrp[,ss_rsrq,ss_rsrp,ss_sinr]; 255 = not known (Rel-15 adds NR)."""
    v = _ints(_payload(line, "+CESQ"), 6)
    out = Cesq(rsrq=_scaled(v[4], 34, -20.0, 0.5), rsrp=_scaled(v[5], 97, -141.0, 1.0))
    if len(v) >= 9:
        out = Cesq(out.rsrq, out.rsrp, nr_rsrq=_scaled(v[6], 127, -43.0, 0.5),
                   nr_rsrp=_scaled(v[7], 126, -156.0, 1.0), nr_snr=_scaled(v[8], 127, -23.0, 0.5))
    return out


def parse_csq(line: str) -> float | None:
    """+CSQ: rssi,ber with dBm = -113 + 2·rssi (0..31); 99 = not known."""
    rssi = _ints(_payload(line, "+CSQ"), 2)[0]
    if rssi == 99:
        return None
    if not 0 <= rssi <= 31:
        raise Malformed(f"rssi {rssi} out of range")
    return -113.0 + 2 * rssi


def parse_reg(line: str, prefix: str, solicited: bool = True) -> int:
    """Read answer `+CEREG: <n>,<stat>[,"<tac>",...]`. The unsolicited form `+CEREG: <stat>[,"<tac>",...]` may
    arrive in the middle of an answer: it has one field, or a quoted second one, and raises Unsolicited when
    an answer is expected."""
    parts = [p.strip() for p in _payload(line, prefix).split(",")]
    urc = len(parts) < 2 or parts[1].startswith('"')
    if urc and solicited:
        raise Unsolicited(line[:40])
    raw = parts[0] if urc else parts[1]
    try:
        stat = int(raw)
    except ValueError:
        raise Malformed(f"bad stat in {line[:40]!r}") from None
    if stat not in REG_WORDS:
        raise Malformed(f"stat {stat} out of range")
    return stat


def parse_cops(line: str) -> tuple[str | None, str | None]:
    """+COPS: <mode>[,<format>,"<oper>"[,<AcT>]] → (operator, technology)."""
    toks = _tokens(_payload(line, "+COPS"))
    if not toks or not toks[0].isdigit():
        raise Malformed(f"bad mode in {line[:40]!r}")
    oper = toks[2] if len(toks) >= 3 and toks[2] else None
    tech = None
    if len(toks) >= 4 and toks[3]:
        if not toks[3].isdigit():
            raise Malformed(f"bad AcT in {line[:40]!r}")
        tech = ACT.get(int(toks[3]))
    return oper, tech


def parse_cgatt(line: str) -> bool:
    v = _payload(line, "+CGATT")
    if v not in ("0", "1"):
        raise Malformed(f"bad state {v[:10]!r}")
    return v == "1"


FINAL_OK = "OK"
FINAL_ERROR = ("ERROR", "+CME ERROR", "+CMS ERROR", "NO CARRIER")
_BAUD = {9600: termios.B9600, 19200: termios.B19200, 38400: termios.B38400, 57600: termios.B57600,
         115200: termios.B115200, 230400: termios.B230400, 460800: termios.B460800, 921600: termios.B921600}
MAX_LINE = 1024


class AtPort:
    """One command at a time on a raw tty; unsolicited lines and noise between answers are skipped."""

    def __init__(self, path: str, baud: int, timeout_s: float, counters: Counters) -> None:
        self.path = path
        self.baud = baud
        self.timeout_s = timeout_s
        self.counters = counters
        self.fd: int | None = None
        self._buf = b""

    def open(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            tty.setraw(fd)
            attrs = termios.tcgetattr(fd)
            attrs[2] |= termios.CLOCAL | termios.CREAD
            attrs[4] = attrs[5] = _BAUD.get(self.baud, termios.B115200)
            termios.tcsetattr(fd, termios.TCSANOW, attrs)
        except termios.error:
            pass  # not a real serial line (a pty or a socket stand-in): speed does not apply
        self.fd = fd
        self._buf = b""
        try:
            self.command("ATE0")  # no echo: fewer lines to skip
        except AtError:
            pass

    def close(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            finally:
                self.fd = None

    def command(self, cmd: str) -> list[str]:
        """Send `cmd`; return the information lines before OK. AtError on ERROR, TimeoutError on silence."""
        if self.fd is None:
            raise OSError(f"{self.path} is not open")
        self._drain()
        os.write(self.fd, cmd.encode() + b"\r")
        deadline = time.monotonic() + self.timeout_s
        lines: list[str] = []
        while True:
            line = self._line(deadline)
            if line == cmd or not line:
                continue  # echo, or an empty line between answers
            if line == FINAL_OK:
                return lines
            if line.startswith(FINAL_ERROR):
                raise AtError(f"{cmd}: {line}")
            lines.append(line)

    def _drain(self) -> None:
        assert self.fd is not None
        while select.select([self.fd], [], [], 0)[0]:
            try:
                if not os.read(self.fd, 4096):
                    break
            except BlockingIOError:
                break
        self._buf = b""

    def _line(self, deadline: float) -> str:
        assert self.fd is not None
        while True:
            for sep in (b"\r", b"\n"):
                i = self._buf.find(sep)
                if i >= 0:
                    raw, self._buf = self._buf[:i], self._buf[i + 1:]
                    return self._decode(raw)
            if len(self._buf) > MAX_LINE:
                self.counters.inc("malformed_at")
                self._buf = b""
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"modem on {self.path} did not answer within {self.timeout_s} s")
            if select.select([self.fd], [], [], left)[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except BlockingIOError:
                    continue
                if not chunk:
                    raise OSError(f"{self.path} closed")
                self._buf += chunk

    def _decode(self, raw: bytes) -> str:
        text = raw.decode("ascii", errors="replace").strip()
        if any(ch == "\ufffd" or (ord(ch) < 32 and ch != "\t") for ch in text):
            self.counters.inc("malformed_at")
            return ""
        return text


class AtModem:
    """Polls one AT port. A command the modem refuses three times in a row is not asked again."""

    COMMANDS = ("AT+CESQ", "AT+CSQ", "AT+CEREG?", "AT+C5GREG?", "AT+CREG?", "AT+COPS?", "AT+CGATT?")

    def __init__(self, path: str, baud: int, timeout_s: float, counters: Counters,
                 log: logging.Logger | None = None) -> None:
        self.port = AtPort(path, baud, timeout_s, counters)
        self.counters = counters
        self.log = log or logging.getLogger("icvq.probe.link")
        self._refused: dict[str, int] = {}

    def close(self) -> None:
        self.port.close()

    def read(self) -> ModemReading:
        if self.port.fd is None:
            self.port.open()
        try:
            answers = {cmd: self._ask(cmd) for cmd in self.COMMANDS if self._refused.get(cmd, 0) < 3}
        except (OSError, TimeoutError):
            self.port.close()  # reopen next time: the USB device may have re-enumerated
            raise
        return self._combine(answers)

    def _ask(self, cmd: str) -> list[str] | None:
        try:
            lines = self.port.command(cmd)
        except AtError:
            n = self._refused[cmd] = self._refused.get(cmd, 0) + 1
            self.counters.inc("at_refused")
            if n == 3:
                self.log.info("modem refuses %s; not asking again", cmd)
            return None
        self._refused[cmd] = 0
        return lines

    def _parse(self, fn: Callable[[str], T], lines: list[str] | None, prefix: str) -> tuple[bool, T | None]:
        """(answered, value) from the first line with `prefix` that parses. Lines with other prefixes are
        unsolicited results; malformed ones are counted and skipped (an answer may follow them)."""
        for line in lines or ():
            if line.startswith(prefix + ":"):
                try:
                    return True, fn(line)
                except Unsolicited:
                    self.counters.inc("at_unsolicited")
                except Malformed:
                    self.counters.inc("malformed_at")
        if lines is not None:
            self.counters.inc("at_no_answer_line")
        return False, None

    def _combine(self, a: dict[str, list[str] | None]) -> ModemReading:
        cesq_ok, cesq = self._parse(parse_cesq, a.get("AT+CESQ"), "+CESQ")
        csq_ok, rssi = self._parse(parse_csq, a.get("AT+CSQ"), "+CSQ")
        known: list[int] = []
        for p in ("CEREG", "C5GREG", "CREG"):
            if f"AT+{p}?" in a:
                _, stat = self._parse(functools.partial(parse_reg, prefix=f"+{p}"), a[f"AT+{p}?"], f"+{p}")
                if stat is not None:
                    known.append(stat)
        registered = any(s in REG_DATA for s in known) if known else None
        reg_stat = next((s for s in known if s in REG_DATA), known[0] if known else None)
        _, cops = self._parse(parse_cops, a.get("AT+COPS?"), "+COPS")
        _, attached = self._parse(parse_cgatt, a.get("AT+CGATT?"), "+CGATT")
        oper, tech = cops if cops else (None, None)
        return ModemReading(
            signal_known=cesq_ok or csq_ok,
            rsrp=cesq.rsrp if cesq else None, rsrq=cesq.rsrq if cesq else None, rssi=rssi,
            nr_rsrp=cesq.nr_rsrp if cesq else None, nr_rsrq=cesq.nr_rsrq if cesq else None,
            nr_snr=cesq.nr_snr if cesq else None,
            tech=tech if registered else None, reg=REG_WORDS.get(reg_stat) if reg_stat is not None else None,
            registered=registered, attached=attached, operator=oper if registered else None)
