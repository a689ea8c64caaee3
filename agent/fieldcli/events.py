"""`icvq events` (the local history, also when the daemon is down) and `icvq tail` (live records)."""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from typing import Any

from .. import history
from ..control import json_default
from .client import EXIT_DOWN, EXIT_OK, Context, RequestError, Unavailable, context, headline
from .fmt import fields, parse_since, table, ts


def fetch(ctx: Context, q: history.Query) -> dict[str, Any]:
    """Ask the daemon; when it is down, read the history file read-only. The result says which it was."""
    try:
        with ctx.client() as c:
            r = c.request({"cmd": "events", "since": _s(q.since_ms), "until": _s(q.until_ms),
                           "name": list(q.names) or None, "limit": q.limit, "before_id": q.before_id})
        return {"running": True, "source": "agent", "events": r["events"], "more": r["more"], "note": r["note"]}
    except Unavailable as e:
        down = e
    if ctx.cfg is None:
        raise Unavailable(f"{down}; and the config cannot be read to find the history: {ctx.config_error}",
                          down.state, down.pid)
    if not history.enabled(ctx.cfg.history):
        raise Unavailable(f"{down}; the local history is off in {ctx.config_path}", down.state, down.pid)
    path = ctx.cfg.history.path
    try:
        rows, more, note = history.query_file(path, q)
    except FileNotFoundError:
        rows, more, note = [], False, "no history file yet"
    except (OSError, sqlite3.Error) as e:
        raise Unavailable(f"{down}; and {path} cannot be read: {e}", down.state, down.pid) from None
    return {"running": False, "agent": down.state, "pid": down.pid, "reason": str(down), "source": path,
            "events": rows, "more": more, "note": note}


def _s(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


def cmd_events(args: argparse.Namespace) -> int:
    ctx = context(args)
    q = history.Query(since_ms=int(args.since * 1000) if args.since is not None else None,
                      names=tuple(args.name or ()), limit=max(1, min(args.limit, history.MAX_QUERY)))
    try:
        res = fetch(ctx, q)
    except Unavailable as e:
        print(f"icvq: {e.explain()}", file=sys.stderr)
        return e.code
    except RequestError as e:
        print(f"icvq: {e}", file=sys.stderr)
        return EXIT_DOWN if e.code == "no_history" else 1
    if args.json:
        print(json.dumps(res, indent=2, default=json_default))
        return EXIT_OK
    if not res["running"]:
        print(f"{headline(res['agent'], res['reason'])}; events read from {res['source']} (read-only)")
    rows = list(reversed(res["events"]))  # newest last, next to the prompt
    if not rows:
        print("no events" + (f" ({res['note']})" if res.get("note") else ""))
        return EXIT_OK
    print(table([f"TIME ({time.strftime('%Z')})", "TYPE", "NAME", "EPISODE", "FIELDS"],
                [(ts(e["t"]) + ("" if e.get("synced", True) else "~"), e["type"], e["name"],
                  f"{e['episode']:016x}" if e.get("episode") is not None else "",
                  fields(e.get("fields"), e.get("value"))) for e in rows]))
    if not all(e.get("synced", True) for e in rows):
        print("(~: stamped before the wall clock was synchronised; the time may be off)")
    if res["more"]:
        print(f"(newest {len(rows)} shown; older ones match too: raise --limit or narrow --since)")
    if res.get("note"):
        print(f"note: {res['note']}")
    return EXIT_OK


def record_line(r: dict[str, Any]) -> str:
    ep = f" #{r['episode']:016x}" if r.get("episode") is not None else ""
    return f"{ts(r['t'], ms=True)}  {r['type']:<6}  {r['name']}{ep}  {fields(r.get('fields'), r.get('value'))}"


def cmd_tail(args: argparse.Namespace) -> int:
    ctx = context(args)
    req: dict[str, Any] = {"cmd": "tail", "name": args.name or None, "types": args.type or None}
    shown = 0
    try:
        with ctx.client() as c:
            for msg in c.stream(req):
                if "record" in msg:
                    r = msg["record"]
                    print(json.dumps(r, default=json_default) if args.json else record_line(r), flush=True)
                    shown += 1
                    if args.count and shown >= args.count:
                        return EXIT_OK
                elif "dropped" in msg:
                    print(f"icvq: {msg['dropped']} records dropped (this terminal reads too slowly; "
                          "narrow with --name)", file=sys.stderr, flush=True)
                elif "end" in msg:
                    print(f"icvq: stream ended: {msg['end']}", file=sys.stderr)
                    return EXIT_DOWN
    except Unavailable as e:
        print(f"icvq: {e.explain()}", file=sys.stderr)
        return e.code
    except RequestError as e:
        print(f"icvq: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return EXIT_OK
    return EXIT_OK


def _since(text: str) -> float:
    try:
        return parse_since(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def register(sub: Any, handlers: dict[str, Any], common: Any) -> None:
    p = sub.add_parser("events", help="recent events, episodes begin/end from the local history "
                       "(also when the agent is down)")
    common(p)
    p.add_argument("--since", type=_since, help="30m, 2h, 3d, or a time like '2024-05-01 12:00'")
    p.add_argument("--name", action="append", help="glob on the event name, e.g. 'display.*' (repeatable)")
    p.add_argument("--limit", type=int, default=50, help="newest N (default 50, at most 5000)")
    handlers["events"] = cmd_events

    p = sub.add_parser("tail", help="live records as the agent commits them (Ctrl-C to stop)")
    common(p)
    p.add_argument("--name", action="append", help="glob on the record name (repeatable)")
    p.add_argument("--type", action="append", choices=("event", "begin", "end", "metric", "health"),
                   help="only these record types (repeatable)")
    p.add_argument("--count", type=int, default=0, help="exit after N records")
    handlers["tail"] = cmd_tail
