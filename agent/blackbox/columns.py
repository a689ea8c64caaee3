"""Ring samples → the snapshot's compact columnar form (pure; tested from tables).

One shared time base per snapshot: every channel's `t` column holds integer milliseconds since the window's
start (T - pre), so 40 s fit in msgpack uint16 and the backend re-anchors all of them with one `base_ms`.
Each other key becomes one column (values in sample order, None where a sample lacked the key): a CPU series
of 40 one-byte integers costs ~45 bytes instead of 40 maps. When the encoded snapshot would exceed its byte
cap, kernel lines farthest from the trigger go first, then whole channels in `SHED_ORDER`; what was shed is
listed in `truncated`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from .ring import Sample

SHED_ORDER = ("procs", "display", "can", "link", "kmsg", "system")


def columnar(samples: Sequence[Sample], base_t: float) -> dict[str, list[Any]]:
    cols: dict[str, list[Any]] = {"t": [round((t - base_t) * 1000) for t, _ in samples]}
    for i, (_, fields) in enumerate(samples):
        for k, v in fields.items():
            col = cols.get(k)
            if col is None:
                col = cols[k] = [None] * i
            col.append(v)
        for k, col in cols.items():
            if len(col) < i + 1 and k != "t":
                col.append(None)
    return cols


def encoded_size(channels: Mapping[str, Any]) -> int:
    return len(msgpack.packb(dict(channels)))


def build(windows: Mapping[str, Sequence[Sample]], base_t: float, trigger_t: float,
          max_bytes: int) -> tuple[dict[str, dict[str, list[Any]]], list[str]]:
    """(channel → columns, what was shed to fit max_bytes). Empty channels are left out."""
    kept = {c: list(s) for c, s in windows.items() if s}
    truncated: list[str] = []

    def cols() -> dict[str, dict[str, list[Any]]]:
        return {c: columnar(s, base_t) for c, s in kept.items()}

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
