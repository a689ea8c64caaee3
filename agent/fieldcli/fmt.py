"""Plain-text formatting for the field tool: ages, sizes, times, aligned tables. No colour, ever: output
goes through ssh, into tickets and into grep."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, TextIO

from .. import health

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])", re.I)


def isatty(stream: TextIO | None = None) -> bool:
    s = stream or sys.stdout
    try:
        return s.isatty()
    except (AttributeError, ValueError):
        return False


def age(seconds: float | None) -> str:
    """The verdict's age format (agent.health.age), with "-" for unknown."""
    return "-" if seconds is None else health.age(seconds)


def size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def ts(t: float | None, *, utc: bool = False, ms: bool = False) -> str:
    if t is None:
        return "-"
    d = datetime.fromtimestamp(t, timezone.utc if utc else None)
    out = d.strftime("%Y-%m-%d %H:%M:%S")
    if ms:
        out += f".{int(t * 1000) % 1000:03d}"
    return out + ("Z" if utc else "")


def parse_since(text: str, now: float | None = None) -> float:
    """'90s', '15m', '2h', '1d12h', '1w' ago, or an absolute local 'YYYY-MM-DD[ HH:MM[:SS]]' / ISO time."""
    now = time.time() if now is None else now
    t = text.strip()
    parts = _DURATION.findall(t)
    if parts and _DURATION.sub("", t).strip() == "":
        return now - sum(float(v) * _UNITS[u.lower()] for v, u in parts)
    try:
        d = datetime.fromisoformat(t.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not a duration (30s, 15m, 2h, 3d) or a time (2024-05-01 12:00): {text!r}") from None
    return d.timestamp()


def fields(data: Mapping[str, Any] | None, value: Any = None) -> str:
    if data is None:
        return "" if value is None else str(value)
    return " ".join(f"{k}={v}" for k, v in data.items())


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    body = [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in body:
        for i, c in enumerate(r[:-1]):
            widths[i] = max(widths[i], len(c))
    lines = []
    for r in [list(headers), *body]:
        # The last column is free text (fields, errors): never padded, never cut.
        lines.append("  ".join([c.ljust(widths[i]) for i, c in enumerate(r[:-1])] + r[-1:]).rstrip())
    return "\n".join(lines)


def kv(rows: Iterable[tuple[str, str]]) -> str:
    rows = list(rows)
    w = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k.ljust(w)}  {v}".rstrip() for k, v in rows)
