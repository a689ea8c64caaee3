"""`icvq status`: is the agent running, and if something is wrong, what. Problems first."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from ..control import json_default
from . import offline
from .client import EXIT_OK, EXIT_PERM, EXIT_UNHEALTHY, Context, Unavailable, ask, context
from .fmt import age, fields, kv, size, table, ts

SPOOL_FULL_WARN = 0.8
BACKLOG_WARN_S = 3600


def fetch(ctx: Context) -> tuple[dict[str, Any], int]:
    """(status, exit code when down or 0); the status says itself whether it came from the daemon or disk."""
    try:
        return ask(ctx, {"cmd": "status"})["status"], EXIT_OK
    except Unavailable as e:
        return offline.status(ctx, str(e), denied=e.code == EXIT_PERM), e.code


def assess(st: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(problems, warnings). A problem makes `icvq status` exit non-zero; a warning is worth a look."""
    problems: list[str] = []
    warnings: list[str] = []
    now = st.get("now") or 0
    if st.get("running") is None:
        problems.append(f"cannot ask the agent: {st.get('reason', '?')}")
    elif not st.get("running"):
        problems.append(f"agent not running: {st.get('reason', '?')}")
        procs = st.get("processes") or []
        if procs:
            problems.append("an icvq-agent process is running but does not answer: pid "
                            + ", ".join(str(p["pid"]) for p in procs))
    else:
        if not st.get("healthy", True):
            problems.append(f"pipeline stalled: last turn {age(st.get('pipeline_age_s'))} ago")
        for name, p in sorted((st.get("probes") or {}).items()):
            if p.get("state") == "error":
                problems.append(f"probe {name} failing: {p.get('last_error') or '?'}")
            elif p.get("state") == "degraded":
                warnings.append(f"probe {name} degraded: {p.get('last_error') or '?'}")
        up = st.get("uplink") or {}
        if (up.get("last_connect_error") or {}).get("code") == "plaintext_refused":
            problems.append(f"uplink held: {up['last_connect_error']['text']}")
        elif not up.get("connected"):
            warnings.append(f"uplink offline: {up.get('last_error') or 'not connected yet'}")
        if up.get("transport") == "plaintext-allowed":
            warnings.append("uplink WITHOUT TLS to a non-loopback broker (uplink.allow_plaintext = true)")
        elif up.get("last_ack_wall") and st.get("inflight") and now - up["last_ack_wall"] > 120:
            warnings.append(f"uplink connected but nothing acknowledged for {age(now - up['last_ack_wall'])}")
        if not (st.get("clock") or {}).get("synced", True):
            warnings.append("wall clock not synchronised (records are re-anchored later)")
        h = st.get("history") or {}
        if h.get("last_error"):
            warnings.append(f"history not writable: {h['last_error']}")
    sp = st.get("spool") or {}
    if sp.get("degraded"):
        problems.append(f"spool not writable, holding records in memory: {sp.get('last_disk_error')}")
    if sp.get("error"):
        warnings.append(f"spool: {sp['error']}")
    if sp.get("max_bytes") and sp.get("bytes", 0) > SPOOL_FULL_WARN * sp["max_bytes"]:
        warnings.append(f"spool {100 * sp['bytes'] / sp['max_bytes']:.0f} % full")
    if sp.get("oldest_wall_ms") and now - sp["oldest_wall_ms"] / 1000 > BACKLOG_WARN_S:
        warnings.append(f"oldest record waiting for {age(now - sp['oldest_wall_ms'] / 1000)}")
    drops = sp.get("drops") or {}
    if drops:
        warnings.append(f"{sum(drops.values())} records dropped since the spool was created")
    return problems, warnings


def render(st: dict[str, Any], *, utc: bool = False) -> str:
    """Human status; ages are relative to the status's own `now` (the car's clock when it was taken), times
    in local time on the car, in UTC when read elsewhere (`icvq inspect`)."""
    now = st.get("now") or 0

    def t(x: float | None) -> str:
        return ts(x, utc=utc)

    problems, warnings = assess(st)
    out: list[str] = []
    if st.get("running"):
        state = "healthy" if not problems else "UNHEALTHY"
        out.append(f"icvq-agent {st.get('version')} is RUNNING, {state} (pid {st.get('pid')}, "
                   f"up {age(st.get('uptime_s'))})")
    elif st.get("running") is None:
        out.append(f"icvq-agent: NO PERMISSION to ask it ({st.get('reason')}); what the disk says, read-only")
    else:
        out.append(f"icvq-agent is NOT RUNNING ({st.get('reason')}); read from disk, read-only")
    out.append("")
    out.append(kv([("problems", "none" if not problems else problems[0])] +
                  [("", p) for p in problems[1:]] +
                  [("warnings", "none" if not warnings else warnings[0])] + [("", w) for w in warnings[1:]]))
    out.append("")
    rows: list[tuple[str, str]] = []
    v = st.get("vehicle")
    if v:
        rows.append(("vehicle", f"{v.get('id')} / {v.get('device')}   fleet {v.get('fleet')}"))
    c = st.get("config") or {}
    rows.append(("config", f"{c.get('path')}   digest {c.get('digest', '-')}" +
                 (f"   ERROR {c['error']}" if c.get("error") else "")))
    if c.get("file_digest") and c.get("file_digest") != c.get("digest"):
        rows.append(("", f"the file on disk differs (digest {c['file_digest']}): reload the agent to apply"))
    clock = st.get("clock")
    if clock:
        rows.append(("clock", f"{'synced' if clock.get('synced') else 'NOT synced'}   boot {clock.get('boot_id')}"))
    up = st.get("uplink")
    if up:
        rows.append(("uplink", _uplink(up, now, t)))
    sp = st.get("spool") or {}
    if sp:
        rows.append(("spool", _spool(sp, now, st.get("inflight"), t)))
    if sp.get("drops"):
        rows.append(("drops", ", ".join(f"{k} {n}" for k, n in sorted(sp["drops"].items()))))
    h = st.get("history")
    if h is None:
        pass
    elif not h.get("enabled"):
        rows.append(("history", "off"))
    elif "events" in h:
        rows.append(("history", f"{h['events']} events, oldest {t(h.get('oldest'))}, newest {t(h.get('newest'))}"
                     + (f"; {h['last_error']}" if h.get("last_error") else "")))
    else:
        rows.append(("history", f"{h.get('written', 0)} events written since start" +
                     (f"; {h['error']}" if h.get("error") else "")))
    out.append(kv(rows))
    probes = st.get("probes")
    if probes:
        out += ["", table(["PROBE", "STATE", "LAST ERROR"],
                          [(n, p.get("state"), p.get("last_error") or "") for n, p in sorted(probes.items())])]
    eps = st.get("episodes")
    if eps:
        out += ["", table(["ACTIVE EPISODE", "SINCE", "FOR", "FIELDS"],
                          [(e.get("name"), t(e.get("since")), age(now - (e.get("since") or now)),
                            fields(e.get("fields"))) for e in eps])]
    elif st.get("running"):
        out += ["", "no active episodes"]
    return "\n".join(out)


def _uplink(up: dict[str, Any], now: float, t: Callable[[float | None], str]) -> str:
    if up.get("connected"):
        s = f"connected to {up.get('broker')}"
        if up.get("protocol"):
            s += f" (MQTT {up['protocol']}{', ' + up['transport'] if up.get('transport') else ''})"
        if up.get("connected_since"):
            s += f" since {t(up['connected_since'])} ({age(now - up['connected_since'])})"
    else:
        s = f"OFFLINE ({up.get('broker')}): {up.get('last_error') or 'not connected yet'}"
    last = up.get("last_ack_wall")
    s += f"; last ack {age(now - last)} ago" if last else "; nothing acknowledged yet"
    # The uplink counts every successful connect, the first one included.
    if (up.get("reconnects") or 0) > 1:
        s += f"; {up['reconnects'] - 1} reconnects"
    return s


def _spool(sp: dict[str, Any], now: float, inflight: Any, t: Callable[[float | None], str]) -> str:
    if sp.get("error"):
        return f"{sp.get('path')}: {sp['error']}"
    s = f"{sp.get('records', 0)} records, {sp.get('batches', 0)} batches, {size(sp.get('bytes'))}"
    if sp.get("max_bytes"):
        s += f" of {size(sp['max_bytes'])}"
    oldest = sp.get("oldest_wall_ms")
    s += f"; oldest {age(now - oldest / 1000)}" if oldest else "; empty"
    if inflight:
        s += f"; {inflight} in flight"
    if sp.get("newest_wall_ms"):
        s += f"; last record written {t(sp['newest_wall_ms'] / 1000)}"
    return s


def exit_code(st: dict[str, Any], down_code: int) -> int:
    if not st.get("running"):
        return down_code
    return EXIT_UNHEALTHY if assess(st)[0] else EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    ctx = context(args)
    st, down_code = fetch(ctx)
    if ctx.cfg is not None and st.get("running"):
        st.setdefault("config", {})["file_digest"] = ctx.cfg.digest
    problems, warnings = assess(st)
    if args.json:
        print(json.dumps({**st, "problems": problems, "warnings": warnings}, indent=2, default=json_default))
    else:
        print(render(st))
    return exit_code(st, down_code)


def register(sub: Any, handlers: dict[str, Any], common: Any) -> None:
    p = sub.add_parser("status", help="is the agent running and healthy; what is wrong (exit 0 ok, 1 unhealthy, "
                       "3 not running, 4 no permission)")
    common(p)
    handlers["status"] = cmd_status
