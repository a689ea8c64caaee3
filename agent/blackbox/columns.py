"""Ring samples → the snapshot's compact columnar form (pure; tested from tables).

One shared time base per snapshot: every channel's `t` column holds integer milliseconds since the window's
start (T - pre), so 40 s fit in msgpack uint16 and the backend re-anchors all of them with one `base_ms`.
Each other key becomes one column (values in sample order, None where a sample lacked the key): a CPU series
of 40 one-byte integers costs ~45 bytes instead of 40 maps; whole-number floats travel as integers, and
non-numeric columns that repeat (bus names, "active", "lte") as runs `{"rle": [value, count, ...]}`: four CAN
buses' 40 s cost 2.8 KB instead of 5.7 KB. When the encoded snapshot would exceed its byte cap, kernel lines
farthest from the trigger go first, then whole channels in `SHED_ORDER`; what was shed is in `truncated`.
Imported by snapshot.py when the first snapshot is built, not at start (issue 13: idle RSS, 19.7 KiB).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from .ring import Sample

SHED_ORDER = ("procs", "display", "can", "link", "kmsg", "system")
GROUP = {"can": "bus"}


def _compact(v: Any) -> Any:
    # A float that is a whole number costs 9 bytes in msgpack, the same integer 1 to 3.
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return int(v)
    return v


def rle(col: list[Any]) -> list[Any] | dict[str, list[Any]]:
    """A column of strings/flags that mostly repeats (a bus name, "active", "lte") as {"rle": [v, n, v, n...]};
    numeric columns stay plain lists."""
    if not col or any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in col):
        return col
    runs: list[Any] = []
    for v in col:
        if runs and runs[-2] == v:
            runs[-1] += 1
        else:
            runs += [v, 1]
    return {"rle": runs} if len(runs) < len(col) else col


def expand(col: Any) -> list[Any]:
    """The plain list of a column, whichever way it was encoded (for readers of snapshots)."""
    if isinstance(col, dict) and isinstance(col.get("rle"), list):
        r = col["rle"]
        return [r[i] for i in range(0, len(r) - 1, 2) for _ in range(int(r[i + 1]))]
    return list(col) if isinstance(col, list) else []


def columnar(samples: Sequence[Sample], base_t: float, group: str | None = None) -> dict[str, Any]:
    """Samples → columns. With `group` (the CAN channel's "bus"), rows are ordered by that key, then time, so
    a bus's rows are contiguous and its name and state collapse into runs."""
    if group is not None:
        samples = sorted(samples, key=lambda s: (str(s[1].get(group, "")), s[0]))
    cols: dict[str, list[Any]] = {"t": [round((t - base_t) * 1000) for t, _ in samples]}
    for i, (_, fields) in enumerate(samples):
        for k, v in fields.items():
            col = cols.get(k)
            if col is None:
                col = cols[k] = [None] * i
            col.append(_compact(v))
        for k, col in cols.items():
            if len(col) < i + 1 and k != "t":
                col.append(None)
    return {k: col if k == "t" else rle(col) for k, col in cols.items()}


def encoded_size(channels: Mapping[str, Any]) -> int:
    return len(msgpack.packb(dict(channels)))


def build(windows: Mapping[str, Sequence[Sample]], base_t: float, trigger_t: float,
          max_bytes: int) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """(channel → columns, what was shed to fit max_bytes). Empty channels are left out."""
    kept = {c: list(s) for c, s in windows.items() if s}
    truncated: list[str] = []

    def cols() -> dict[str, dict[str, Any]]:
        return {c: columnar(s, base_t, GROUP.get(c)) for c, s in kept.items()}

    out = cols()
    if encoded_size(out) <= max_bytes:
        return out, truncated
    lines = kept.get("kmsg", [])
    if lines:
        # Drop the kernel lines farthest from the trigger, a quarter at a time, until it fits or none are left.
        order = sorted(range(len(lines)), key=lambda i: abs(lines[i][0] - trigger_t))
        n = len(order)
        while n > 0 and encoded_size(out) > max_bytes:
            n = n * 3 // 4 if n > 4 else n - 1
            keep = sorted(order[:n])
            kept["kmsg"] = [lines[i] for i in keep]
            if not kept["kmsg"]:
                del kept["kmsg"]
            out = cols()
        if n < len(lines):
            truncated.append(f"kmsg:{len(lines) - n}")
    for c in SHED_ORDER:
        if encoded_size(out) <= max_bytes:
            break
        if c in kept:
            del kept[c]
            truncated.append(c)
            out = cols()
    return out, truncated
