"""Pure rules: samples in, verdicts out. No clocks, sockets or state here; tests drive them from tables."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

from ...dataclass_shared import dataclass

# ---------------------------------------------------------------------------------------------- counters


def counter_verdict(prev: int, cur: int, modulo: int) -> tuple[str, int]:
    """Alive counter step → ("ok" | "repeat" | "jump", frames lost). A value outside 0..modulo-1 (P01's 15)
    is a jump of unknown size, reported as 0 lost."""
    if not 0 <= cur < modulo:
        return "jump", 0
    delta = (cur - prev) % modulo
    if delta == 1:
        return "ok", 0
    if delta == 0:
        return "repeat", 0
    return "jump", delta - 1


def missed_cycles(gap_s: float, cycle_s: float) -> int:
    """Cycles that should have arrived inside a gap; half a cycle late is jitter, not a miss."""
    if cycle_s <= 0 or gap_s < 1.5 * cycle_s:
        return 0
    return max(0, round(gap_s / cycle_s) - 1)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in 0..100)."""
    if not sorted_values:
        return math.nan
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


def jitter_ms(periods_s: Iterable[float], cycle_s: float) -> dict[str, float]:
    """p50/p99 of |period - cycle| and the median period, in ms, over one window."""
    ps = sorted(p for p in periods_s if p >= 0)
    if not ps:
        return {}
    dev = sorted(abs(p - cycle_s) for p in ps)
    return {"period_p50_ms": round(percentile(ps, 50) * 1000, 3),
            "jitter_p50_ms": round(percentile(dev, 50) * 1000, 3),
            "jitter_p99_ms": round(percentile(dev, 99) * 1000, 3)}


# ------------------------------------------------------------------------------------------------- load
# Unstuffed frame length: 47 bits of overhead with an 11-bit id (SOF, id, RTR, IDE, r0, DLC, CRC, delimiters,
# ACK, EOF, intermission), 67 with a 29-bit id, plus 8 per data byte. Interface counters cannot tell the two
# id sizes apart, so bus load assumes 11-bit ids: a lower bound, as `canbusload` without -e.
BITS_STD = 47
BITS_EXT = 67


def bus_load_pct(frames: int, data_bytes: int, seconds: float, bitrate: int, ext_frames: int = 0) -> float:
    if seconds <= 0 or bitrate <= 0:
        return 0.0
    bits = BITS_STD * frames + (BITS_EXT - BITS_STD) * ext_frames + 8 * data_bytes
    return round(100.0 * bits / (seconds * bitrate), 2)


# ------------------------------------------------------------------------------------------- conditions

_COND = re.compile(r"^\s*(==|!=|<=|>=|<|>|not\s+in\b|in\b)\s*(.+?)\s*$")
_OPS = {"==": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}


class ConditionError(ValueError):
    pass


@dataclass(frozen=True)
class Condition:
    """`fault_when` compiled: `== 1`, `!= 0`, `>= 3`, `in 1, 2`, `not in 0, 3`, `== 'BLOCKED'` (a DBC value name)."""

    text: str
    op: str
    operands: tuple[float, ...]

    def holds(self, value: float) -> bool:
        if self.op == "in":
            return value in self.operands
        if self.op == "not in":
            return value not in self.operands
        return bool(_OPS[self.op](value, self.operands[0]))


def _operand(tok: str, names: Mapping[str, float]) -> float:
    tok = tok.strip()
    if len(tok) >= 2 and tok[0] == tok[-1] and tok[0] in "'\"":
        name = tok[1:-1]
        if name not in names:
            known = ", ".join(sorted(names)[:12]) or "none"
            raise ConditionError(f"unknown value name {name!r} (the DBC defines: {known})")
        return names[name]
    try:
        return float(int(tok, 0))
    except ValueError:
        pass
    try:
        return float(tok)
    except ValueError:
        raise ConditionError(f"not a number or a quoted value name: {tok!r}") from None


def parse_condition(text: str, names: Mapping[str, float] | None = None) -> Condition:
    m = _COND.match(text)
    if not m:
        raise ConditionError(f"cannot parse {text!r}: expected '<op> <value>' with op one of "
                             "==, !=, <, <=, >, >=, in, not in")
    op = " ".join(m.group(1).split())
    toks = [t for t in m.group(2).split(",") if t.strip()] if op in ("in", "not in") else [m.group(2)]
    if not toks:
        raise ConditionError(f"no value after {op!r}")
    return Condition(text.strip(), op, tuple(_operand(t, names or {}) for t in toks))


# ----------------------------------------------------------------------------------------- error frames
# linux/can/error.h: classes in can_id, controller details in data[1], counters in data[6]/data[7].
CAN_ERR_FLAG = 0x20000000
ERR_CLASSES = ((0x001, "tx_timeout"), (0x002, "lostarb"), (0x004, "crtl"), (0x008, "prot"), (0x010, "trx"),
               (0x020, "ack"), (0x040, "busoff"), (0x080, "buserror"), (0x100, "restarted"), (0x200, "cnt"))
CRTL_RX_PASSIVE, CRTL_TX_PASSIVE = 0x10, 0x20
CRTL_RX_WARNING, CRTL_TX_WARNING = 0x04, 0x08
CRTL_ACTIVE = 0x40
ERR_CLASS_CNT = 0x200
ERR_CLASS_CRTL = 0x004


@dataclass(frozen=True)
class ErrorFrame:
    classes: tuple[str, ...]
    state: str | None  # the controller state the frame announces, if any
    tec: int | None
    rec: int | None


def decode_error_frame(can_id: int, data: bytes) -> ErrorFrame:
    cls = can_id & 0x1FFFFFFF
    d = bytes(data).ljust(8, b"\0")
    names = tuple(n for bit, n in ERR_CLASSES if cls & bit)
    state: str | None = None
    if cls & 0x040:
        state = "bus_off"
    elif cls & 0x100:
        state = "active"  # the controller restarted after bus-off
    elif cls & ERR_CLASS_CRTL:
        if d[1] & (CRTL_RX_PASSIVE | CRTL_TX_PASSIVE):
            state = "passive"
        elif d[1] & (CRTL_RX_WARNING | CRTL_TX_WARNING):
            state = "warning"
        elif d[1] & CRTL_ACTIVE:
            state = "active"
    tec = rec = None
    if cls & ERR_CLASS_CNT:
        tec, rec = d[6], d[7]
    return ErrorFrame(names or ("unspecified",), state, tec, rec)


# --------------------------------------------------------------------------------------- bus state
IP_STATES = {"ERROR-ACTIVE": "active", "ERROR-WARNING": "warning", "ERROR-PASSIVE": "passive",
             "BUS-OFF": "bus_off", "STOPPED": "stopped", "SLEEPING": "sleeping"}


def state_from_counters(tec: int, rec: int) -> str:
    """ISO 11898-1 fault confinement: warning at 96, error-passive at 128, bus-off past 255 (TEC only)."""
    if tec > 255:
        return "bus_off"
    if tec >= 128 or rec >= 128:
        return "passive"
    if tec >= 96 or rec >= 96:
        return "warning"
    return "active"


_EPISODE_OF = {"bus_off": "can.bus_off", "passive": "can.error_passive"}


def bus_state_changes(prev: str, new: str) -> list[tuple[str, str]]:
    """Episode edges for a controller state change: [("end"|"begin", record name)]. Passive and bus-off are
    separate episodes: passive → bus-off ends one and begins the other."""
    if prev == new:
        return []
    out: list[tuple[str, str]] = []
    if prev in _EPISODE_OF:
        out.append(("end", _EPISODE_OF[prev]))
    if new in _EPISODE_OF:
        out.append(("begin", _EPISODE_OF[new]))
    return out
