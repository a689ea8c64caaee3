"""The black box's snapshot budget on disk, so a restart does not hand out a fresh one.

Without it every start began with an empty budget: a campaign's `max_snapshots` capped it per run, not in
total (a unit rebooted every drive sent its cap every drive), and an agent in a restart loop under systemd
could send `max_per_hour` snapshots per restart over the cellular link.

Kept: each campaign's total (across reboots: it is a count, not a time), and within one boot the monotonic
times of the last hour's snapshots and each key's last snapshot (CLOCK_MONOTONIC is the boot's, so they mean
nothing after a reboot and are dropped then). One small private JSON file, replaced atomically (fsync, rename)
after each snapshot taken: at most `max_per_hour` writes an hour. No threads; called on the pipeline thread.
An unreadable file gives an empty budget, logged, never fatal. Imported when the first snapshot is taken, or at
start when the file exists (issue 13: idle RSS, 18.5 KiB: a car that never took one never loads it).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import field
from pathlib import Path

from ..dataclass_shared import dataclass
from ..private import replace_private

log = logging.getLogger("icvq.blackbox")

FORMAT = 1
MAX_KEYS = 256          # bounds the file whatever campaigns come and go


@dataclass
class Budget:
    taken: list[float] = field(default_factory=list)       # monotonic times of the last hour's snapshots
    last: dict[str, float] = field(default_factory=dict)   # rate-limit key -> its last snapshot (monotonic)
    counts: dict[str, int] = field(default_factory=dict)   # rate-limit key -> snapshots taken in total


def save(path: Path, boot_id: str, taken: Sequence[float], last: Mapping[str, float],
         counts: Mapping[str, int]) -> None:
    body = {"v": FORMAT, "boot": boot_id, "taken": list(taken)[-3600:],
            "last": dict(list(last.items())[-MAX_KEYS:]), "counts": dict(list(counts.items())[-MAX_KEYS:])}
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_private(path, json.dumps(body, separators=(",", ":"), sort_keys=True).encode(), 0o600)


def _finite(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load(path: Path, boot_id: str, now_mono: float) -> Budget:
    try:
        top = json.loads(path.read_bytes())
    except FileNotFoundError:
        return Budget()
    except (OSError, ValueError) as e:
        log.error("snapshot budget %s unreadable (%s); starting with a fresh one", path, e)
        return Budget()
    if not isinstance(top, dict) or top.get("v") != FORMAT:
        log.error("snapshot budget %s is not a v%d budget file; starting with a fresh one", path, FORMAT)
        return Budget()
    counts = top.get("counts")
    b = Budget(counts={str(k): int(v) for k, v in counts.items() if _finite(v) and v >= 0}
               if isinstance(counts, dict) else {})
    if top.get("boot") == boot_id:
        taken, last = top.get("taken"), top.get("last")
        b.taken = sorted(float(t) for t in taken if _finite(t) and now_mono - 3600 < t <= now_mono) \
            if isinstance(taken, list) else []
        b.last = {str(k): float(v) for k, v in last.items() if _finite(v) and v <= now_mono} \
            if isinstance(last, dict) else {}
    return b
