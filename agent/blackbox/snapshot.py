"""What happens once a record matched a trigger: the budget and rate limits decide, the snapshot is scheduled
(`Pending`), the budget is saved, and at T + post the snapshot record is built from the ring.

No threads of its own: `take` runs on the pipeline thread (the recorder's observer), `build` on the black box
thread. Split from recorder.py because an idle healthy car never gets here: the recorder only matches records
against its triggers, and this module, columns.py (the snapshot's encoding) and budget_store.py's writer are
imported at the first match (issue 13: idle RSS; ~50 KiB of Python objects with them, tracemalloc).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..dataclass_shared import dataclass
from ..records import Kind, Record
from . import budget_store, columns
from .settings import CHANNELS
from .triggers import Trigger, family

if TYPE_CHECKING:
    from .recorder import BlackBox

log = logging.getLogger("icvq.blackbox")

SNAPSHOT = "blackbox.snapshot"


@dataclass
class Pending:
    due: float
    t: float
    record: Record
    capture: tuple[str, ...]
    pre_s: float
    post_s: float
    campaigns: tuple[str, ...]
    family_key: str | None


def onset(r: Record, pre_s: float) -> float:
    """When the trigger's problem began, on the monotonic clock in seconds: a BEGIN is emitted when the
    problem is confirmed, which can be seconds after it started (`detected_after_s`, or the link probe's
    back-dated wall-clock `start`). The snapshot is centred on the start, at most `pre_s` back. An END (a
    campaign's `kinds: ["end"]`) is taken where it is: it carries its episode's `start` too, and moving T
    back to it would leave `post_s` covering the episode instead of what followed its end."""
    t = r.mono_ms / 1000
    if r.kind is Kind.END:
        return t
    fields = r.data if isinstance(r.data, Mapping) else {}
    back = 0.0
    det = fields.get("detected_after_s")
    start = fields.get("start")
    if isinstance(det, (int, float)) and not isinstance(det, bool):
        back = float(det)
    elif isinstance(start, (int, float)) and not isinstance(start, bool):
        back = r.wall_ms / 1000 - float(start)
    if not math.isfinite(back):
        back = 0.0
    return t - min(max(0.0, back), pre_s)


def take(box: BlackBox, r: Record, hits: list[Trigger], now: float) -> None:
    """`r` matched `hits`: schedule a snapshot unless the hourly cap or every hit's rate limit says no."""
    # One budget over all triggers: campaigns may set short intervals, the cellular link stays bounded.
    while box._taken and now - box._taken[0] >= 3600.0:
        box._taken.popleft()
    if len(box._taken) >= box.cfg.max_per_hour:
        box.counters.inc("suppressed.hourly_cap")
        return
    taken = [t for t in hits if box.limiter.allow(t, now)]
    for t in hits:
        if t not in taken:
            box.counters.inc(f"suppressed.{t.key}")
    if not taken:
        return
    box._taken.append(now)
    save_budget(box, hits)
    box._procs_now = True
    pre = max(t.pre_s for t in taken)
    post = max(t.post_s for t in taken)
    capture = tuple(c for c in CHANNELS if any(c in t.capture for t in taken) and c in box.enabled_channels)
    t0 = onset(r, pre)
    p = Pending(t0 + post, t0, r, capture, pre, post, tuple(t.campaign for t in taken if t.campaign),
                next((t.key for t in taken if t.campaign is None), None))
    with box._lock:
        box._pending.append(p)
    box.counters.inc("triggered")


def save_budget(box: BlackBox, hits: list[Trigger]) -> None:
    if box.budget_path is None:
        return
    # Keys of triggers that no longer exist (a retired campaign) are forgotten; these hits are current.
    live = {t.key for t in (*box.builtin, *box.campaign_triggers, *hits)}
    lim = box.limiter
    try:
        budget_store.save(box.budget_path, box.clock.boot_id, box._taken,
                          {k: v for k, v in lim.last.items() if k in live},
                          {k: v for k, v in lim.taken.items() if k in live})
    except OSError as e:
        # A full or read-only disk: the budget still holds in memory for this run.
        if not box.counters.get("budget_unsaved"):
            log.warning("snapshot budget not saved to %s (%s); it holds for this run only", box.budget_path, e)
        box.counters.inc("budget_unsaved")


def build(box: BlackBox, p: Pending, complete: bool = True) -> Record:
    """The snapshot record of `p`: the ring's T - pre .. T + post of the channels it captures."""
    base = p.t - p.pre_s
    windows = box.ring.window(base, p.t + p.post_s, p.capture)
    chans, truncated = columns.build(windows, base, p.t, box.cfg.snapshot_max_kib * 1024)
    r = p.record
    t_ms = round(p.t * 1000)
    data: dict[str, Any] = {
        "trigger": r.name, "trigger_kind": r.kind.label, "family": family(r.name),
        "base_ms": r.wall_ms - (r.mono_ms - t_ms) - round(p.pre_s * 1000),
        "pre_s": p.pre_s, "post_s": p.post_s, "complete": complete, **chans}
    if p.campaigns:
        data["campaigns"] = list(p.campaigns)
    if truncated:
        data["truncated"] = truncated
    if r.kind is Kind.EVENT:
        # An event has no episode to link to: its scalar fields travel along (long strings cut).
        items = r.data.items() if isinstance(r.data, dict) else ()
        data["trigger_fields"] = {k: v[:200] if isinstance(v, str) else v for k, v in items
                                  if isinstance(v, (int, float, str, bool))}
    box.counters.inc("snapshots")
    return box.rec.snapshot(SNAPSHOT, data, of=r, mono_ms=t_ms)
