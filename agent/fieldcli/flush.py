"""`icvq flush [--wait]`: upload now; with --wait, until everything spooled before the request is acked.

When the wait ends with records left, it says why with the agent's own verdict (offline, no backend
subscribed, spool trouble...): the same reasons `icvq status` shows.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .client import EXIT_FAILING, EXIT_OK, RequestError, Unavailable, context
from .fmt import age, isatty, ts
from .status import reason_text


def waiting(sp: dict[str, Any]) -> tuple[int, int]:
    """(records, batches) not yet acknowledged: on disk and held in memory (the spool's disk full, read-only or
    unopenable), one count for the drained test and for what a timeout says."""
    return ((sp.get("records") or 0) + (sp.get("memory_records") or 0),
            (sp.get("batches") or 0) + (sp.get("memory_batches") or 0))


def drained(st: dict[str, Any], requested_at: float) -> bool:
    """Records keep arriving while we wait, so 'empty' means: no sealed batch left and nothing unsealed
    that is older than the request (with no batches, the spool's oldest timestamp is the oldest record's).
    Records and batches held in memory count as waiting."""
    sp = st.get("spool") or {}
    records, batches = waiting(sp)
    if batches or st.get("inflight"):
        return False
    oldest = sp.get("oldest_wall_ms")
    return not records or (oldest is not None and oldest / 1000 >= requested_at)


def cmd_flush(args: argparse.Namespace) -> int:
    ctx = context(args)
    progress = isatty(sys.stderr)
    t0 = time.monotonic()
    try:
        with ctx.client() as c:
            requested_at = c.request({"cmd": "flush"})["requested_at"]
            if not args.wait:
                print(json.dumps({"ok": True, "requested_at": requested_at}) if args.json else "flush requested")
                return EXIT_OK
            deadline = t0 + args.timeout
            while True:
                st = c.request({"cmd": "status"})["status"]
                sp, up = st.get("spool") or {}, st.get("uplink") or {}
                done = drained(st, requested_at)
                if progress:
                    why = "; ".join(r["text"] for r in waiting_reasons(st)[:1]) or "uplink connected"
                    print(f"\r\033[Kwaiting {age(time.monotonic() - t0)}: {sp.get('records', 0)} records, "
                          f"{sp.get('batches', 0)} batches in spool; {why}", end="", file=sys.stderr, flush=True)
                if done or time.monotonic() >= deadline:
                    break
                time.sleep(0.5)
    except Unavailable as e:
        print(f"icvq: {e.explain()}", file=sys.stderr)
        return e.code
    except RequestError as e:
        print(f"icvq: {e}", file=sys.stderr)
        return EXIT_FAILING
    if progress:
        print(file=sys.stderr)
    elapsed = round(time.monotonic() - t0, 1)
    reasons = [] if done else waiting_reasons(st)
    if args.json:
        print(json.dumps({"ok": done, "elapsed_s": elapsed, "spool": sp, "uplink": up,
                          "verdict": st.get("verdict"), "why": reasons}, default=str))
    elif done:
        print(f"flushed: everything spooled before the request was acknowledged ({elapsed} s)")
    else:
        now = st.get("now") or time.time()
        mem = sp.get("memory_records") or 0
        records, batches = waiting(sp)
        lines = [f"timed out after {elapsed} s: {records} records and {batches} batches still waiting"
                 + (f" ({mem} records held in memory)" if mem else "") + (", because:" if reasons else
                                             " (the agent names no reason: the uplink may be slow)")]
        lines += [f"  {r['severity']}  {reason_text(r, now, ts)}" for r in reasons]
        print("\n".join(lines))
    return EXIT_OK if done else EXIT_FAILING


def waiting_reasons(st: dict[str, Any]) -> list[dict[str, Any]]:
    """The verdict's reasons that hold records back (not the notes): the agent's words, not ours."""
    return [r for r in (st.get("verdict") or {}).get("reasons") or [] if r.get("severity") != "note"]


def register(sub: Any, handlers: dict[str, Any], common: Any) -> None:
    p = sub.add_parser("flush", help="upload the spool now (exit 1 when --wait times out)")
    common(p)
    p.add_argument("--wait", action="store_true", help="wait until everything spooled before the request is "
                   "acknowledged by the backend; on timeout, say why records still wait")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait at most (default 60)")
    handlers["flush"] = cmd_flush
