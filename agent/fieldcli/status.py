"""`icvq status`: is the agent running, and if something is wrong, what. Problems first.

The health verdict is the agent's (agent/health.py, in the status as `verdict`): this module renders it and
never re-derives it, so text, `--json`, systemd's STATUS= line and `icvq flush` say the same. When the agent
cannot be asked, the header says why (NOT RUNNING, HUNG, NO PERMISSION) and the rest is read from disk.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from .. import spool_disk
from ..control import json_default
from . import offline
from .client import EXIT_DEGRADED, EXIT_FAILING, EXIT_OK, Context, Unavailable, ask, context, headline
from .fmt import age, fields, kv, size, table, ts

VERDICT_EXIT = {"healthy": EXIT_OK, "degraded": EXIT_DEGRADED, "failing": EXIT_FAILING}


def fetch(ctx: Context) -> tuple[dict[str, Any], int]:
    """(status, exit code when the agent could not be asked, else 0); the status says where it came from:
    `agent` is running | not_running | hung | no_permission."""
    try:
        st = ask(ctx, {"cmd": "status"})["status"]
        return {**st, "agent": "running"}, EXIT_OK
    except Unavailable as e:
        return offline.status(ctx, e), e.code


def reason_text(r: dict[str, Any], now: float, t: Callable[[float | None], str]) -> str:
    since = r.get("since")
    return r.get("text", "?") + (f" (since {t(since)}, {age(now - since)})" if since else "")


def render(st: dict[str, Any], *, utc: bool = False) -> str:
    """Human status; ages are relative to the status's own `now` (the car's clock when it was taken), times
    in local time on the car, in UTC when read elsewhere (`icvq inspect`)."""
    now = st.get("now") or 0

    def t(x: float | None) -> str:
        return ts(x, utc=utc)

    out: list[str] = []
    v = st.get("verdict")
    agent = st.get("agent") or ("running" if st.get("running") else "not_running")
    if agent == "running":
        state = (v or {}).get("state", "unknown (agent too old to say)")
        out.append(f"icvq-agent {st.get('version')} is RUNNING, {state.upper()} (pid {st.get('pid')}, "
                   f"up {age(st.get('uptime_s'))})")
        reasons = (v or {}).get("reasons") or []
        problems = [r for r in reasons if r.get("severity") != "note"]
        notes = [r for r in reasons if r.get("severity") == "note"]
        out.append("")
        lines = [(f"{r.get('severity')}", reason_text(r, now, t)) for r in problems] or [("problems", "none")]
        lines += [("note", reason_text(r, now, t)) for r in notes]
        out.append(kv(lines))
    else:
        out.append(f"{headline(agent, str(st.get('reason')))}; read from disk, read-only")
    out.append("")
    rows: list[tuple[str, str]] = []
    veh = st.get("vehicle")
    if veh:
        rows.append(("vehicle", f"{veh.get('id')} / {veh.get('device')}   fleet {veh.get('fleet')}"))
    c = st.get("config") or {}
    rows.append(("config", f"{c.get('path')}   digest {c.get('digest', '-')}" +
                 (f"   ERROR {c['error']}" if c.get("error") else "")))
    if c.get("file_digest") and c.get("file_digest") != c.get("digest"):
        rows.append(("", f"the file on disk differs (digest {c['file_digest']}): reload the agent to apply"))
    if c.get("file_error"):
        rows.append(("", f"the file on disk does not load (the agent runs on with the config above): "
                         f"{c['file_error']}"))
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
    bb = st.get("blackbox")
    if bb:
        rows.append(("context", _blackbox(bb, t)))  # the black box (<= 7 chars: keeps the column)
    out.append(kv(rows))
    probes = st.get("probes")
    if probes:
        out += ["", table(["PROBE", "STATE", "LAST ERROR"],
                          [(n, p.get("state"), p.get("last_error") or "") for n, p in sorted(probes.items())])]
        inputs = [(f"{n} sources", _sources(p)) for n, p in sorted(probes.items()) if p.get("sources")]
        if inputs:
            out.append(kv(inputs))
    eps = st.get("episodes")
    if eps:
        out += ["", table(["ACTIVE EPISODE", "SINCE", "FOR", "FIELDS"],
                          [(e.get("name"), t(e.get("since")), age(now - (e.get("since") or now)),
                            fields(e.get("fields"))) for e in eps])]
    elif st.get("running"):
        out += ["", "no active episodes"]
    return "\n".join(out)


def _sources(p: dict[str, Any]) -> str:
    """A probe's own inputs (display: framebuffer, drm, heartbeat, ...), each up or DOWN with why: the probe's
    `degraded` says that one is down, this line says which (a missing DRM helper, a card gone)."""
    s = ", ".join(name + (" up" if state == "up" else f" DOWN ({str(state).removeprefix('down: ')})")
                  for name, state in sorted(p["sources"].items()))
    return s + (f"; frame {p['framebuffer']}" if p.get("framebuffer") else "")


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
    if up.get("client_cert_not_after"):
        s += f"; client certificate valid until {t(up['client_cert_not_after'])}"
    return s


def _blackbox(bb: dict[str, Any], t: Callable[[float | None], str]) -> str:
    if not bb.get("enabled"):
        return "off"
    if bb.get("campaigns_error"):
        return f"campaigns: {bb['campaigns_error']}"
    c = bb.get("counters") or {}
    supp = sum(v for k, v in c.items() if k.startswith("suppressed."))
    s = (f"ring {size((bb.get('ring') or {}).get('bytes'))}, {c.get('snapshots', 0)} snapshots made"
         + (f", {supp} suppressed by rate limits" if supp else "") + "; ") if "ring" in bb else "(from disk) "
    camps = bb.get("campaigns") or []
    s += "campaigns: " + (", ".join(_campaign(x, t) for x in camps) if camps else "none")
    return s


def _campaign(x: dict[str, Any], t: Callable[[float | None], str]) -> str:
    if x.get("state") == "scheduled" and x.get("start") is not None:  # "scheduled until <end>" read as a start
        return f"{x.get('id')} (scheduled from {t(x.get('start'))} until {t(x.get('end'))})"
    return f"{x.get('id')} ({x.get('state')} until {t(x.get('end'))})"


def _spool(sp: dict[str, Any], now: float, inflight: Any, t: Callable[[float | None], str]) -> str:
    if sp.get("error"):
        return f"{sp.get('path')}: {sp['error']}"
    s = f"{sp.get('records', 0)} records, {sp.get('batches', 0)} batches, {size(sp.get('bytes'))}"
    cap, mx = sp.get("cap_bytes"), sp.get("max_bytes")
    if isinstance(cap, int) and isinstance(mx, int) and mx:
        # What the database may hold, as the verdict's "spool N % full" counts it: max_mib less the WAL's,
        # -shm's and reserve's shares, and less again while the file system's headroom squeezes it.
        s += f" of {size(cap)}"
        if cap < spool_disk.Budget.for_cap(mx).db_cap:
            s += f" (max_mib {size(mx)}, cut to what the file system has free)"
    elif mx:
        s += f" of {size(mx)}"
    oldest = sp.get("oldest_wall_ms")
    mem, mem_batches = sp.get("memory_records") or 0, sp.get("memory_batches") or 0
    s += f"; oldest {age(now - oldest / 1000)}" if oldest else "" if mem else "; empty"
    if mem:   # while the disk is full or read-only the records are here, not on disk: never "empty"
        s += f"; {mem} records held in memory" + (f" ({mem_batches} batches sealed there)" if mem_batches else "")
    if inflight:
        s += f"; {inflight} in flight"
    if sp.get("newest_wall_ms"):
        s += f"; last record written {t(sp['newest_wall_ms'] / 1000)}"
    return s


def exit_code(st: dict[str, Any], down_code: int) -> int:
    if st.get("agent") != "running":
        return down_code
    return VERDICT_EXIT.get((st.get("verdict") or {}).get("state", ""), EXIT_FAILING)


def cmd_status(args: argparse.Namespace) -> int:
    ctx = context(args)
    st, down_code = fetch(ctx)
    if ctx.cfg is not None and st.get("agent") == "running":
        st.setdefault("config", {})["file_digest"] = ctx.cfg.digest
    elif st.get("agent") == "running":   # a broken edit the agent refused to reload: it runs on the old one
        st.setdefault("config", {})["file_error"] = ctx.config_error
    if args.json:
        print(json.dumps(st, indent=2, default=json_default))
    else:
        print(render(st))
    return exit_code(st, down_code)


def register(sub: Any, handlers: dict[str, Any], common: Any) -> None:
    p = sub.add_parser("status", help="is the agent running; its health verdict and why (exit 0 healthy, "
                       "6 degraded, 1 failing, 3 not running, 4 no permission, 5 hung)")
    common(p)
    handlers["status"] = cmd_status
