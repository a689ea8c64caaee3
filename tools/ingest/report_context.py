"""The report's "Context around episodes" section: for the latest episodes that came with a black-box
snapshot (kind `snapshot`, linked by episode id), small panels on one time axis around the episode's start —
CPU (total and per core), memory, link signal — and the kernel lines nearest the start.

Reads only what the stores keep for every record (the `records` and `episodes` tables), so SQLite and
PostgreSQL serve it alike. Pure SVG, like the rest of the report (no JavaScript).
"""

from __future__ import annotations

import json
import time
from html import escape
from typing import Any

from agent.blackbox.columns import expand

from . import svg
from .store import Store

MAX_EPISODES = 6
MAX_KMSG = 12
PANEL_W, PANEL_H = 720, 120
LEVELS = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")

QUERY = ("SELECT s.vehicle, s.device, s.episode, s.t, s.fields, e.name, e.fields_begin, e.duration_s "
         "FROM records s LEFT JOIN episodes e ON e.vehicle = s.vehicle AND e.device = s.device "
         "AND e.episode = s.episode WHERE s.kind = 'snapshot' ORDER BY s.t DESC LIMIT ?")


def _series(ch: dict[str, Any], key: str, pre_s: float) -> list[tuple[float, float]]:
    t, v = expand(ch.get("t")), expand(ch.get(key))
    return [(ms / 1000 - pre_s, float(y)) for ms, y in zip(t, v, strict=False)
            if isinstance(y, (int, float)) and not isinstance(y, bool) and isinstance(ms, (int, float))]


def panel(series: dict[str, list[tuple[float, float]]], title: str, ylabel: str, x: tuple[float, float],
          y: tuple[float, float] | None = None, last: bool = False, at: str = "start") -> str:
    pts = [p for s in series.values() for p in s]
    if not pts:
        return ""
    ys = [p[1] for p in pts]
    lo, hi = y if y else (min(ys), max(ys))
    if hi <= lo:
        lo, hi = lo - 1, hi + 1
    fr = svg.Frame(PANEL_W - 150, PANEL_H, x, (lo, hi), bottom=34 if last else 16)
    xt = svg.nice_ticks(x[0], x[1], 8)
    body = [fr.axes(xt if last else [], svg.nice_ticks(lo, hi, 3), xlabel=f"seconds from the episode's {at}"
                    if last else "", ylabel=ylabel)]
    x0 = fr.sx(0.0)
    body.append(f'<line x1="{x0:.1f}" y1="{fr.top}" x2="{x0:.1f}" y2="{PANEL_H - fr.bottom}" stroke="#d62728" '
                'stroke-dasharray="4,3" stroke-width="1.5"/>')
    for i, (name, s) in enumerate(series.items()):
        c = svg.PALETTE[i % len(svg.PALETTE)]
        path = " ".join(f"{'M' if j == 0 else 'L'}{fr.sx(a):.1f},{fr.sy(b):.1f}" for j, (a, b) in enumerate(s))
        width = "2" if i == 0 else "1.2"
        body.append(f'<path d="{path}" fill="none" stroke="{c}" stroke-width="{width}"/>')
        ly = 14 + i * 14
        body.append(f'<rect x="{PANEL_W - 140}" y="{ly - 9}" width="10" height="10" fill="{c}"/>'
                    f'<text x="{PANEL_W - 125}" y="{ly}" {svg.FONT}>{escape(name)}</text>')
    return svg.svg(PANEL_W, PANEL_H, "\n".join(body), title)


def episode_block(vehicle: str, device: str, episode: int | None, t: float, snap: dict[str, Any],
                  name: str | None, begin: dict[str, Any], duration: float | None) -> str:
    pre, post = float(snap.get("pre_s") or 0), float(snap.get("post_s") or 0)
    x = (-pre, post)
    # A campaign may trigger on an episode's END: its T is the end (agent/blackbox/triggers.onset).
    at = "end" if snap.get("trigger_kind") == "end" else "start"
    sysc = snap.get("system") or {}
    cores = sorted((k for k in sysc if k.startswith("cpu") and k[3:].isdigit()), key=lambda k: int(k[3:]))
    cpu = {"CPU total": _series(sysc, "cpu", pre), **{k: _series(sysc, k, pre) for k in cores}}
    mem = {"memory used": _series(sysc, "mem", pre)}
    link = snap.get("link") or {}
    sig = {k: _series(link, k, pre) for k in ("rsrp", "nr_rsrp", "rssi") if _series(link, k, pre)}
    specs = [(sr, title, unit, yr) for sr, title, unit, yr in ((cpu, "CPU", "CPU %", (0.0, 100.0)),
                                                                (mem, "memory", "mem %", None),
                                                                (sig, "link signal", "dBm", None))
             if any(sr.values())]
    # One time axis for all: only the last panel draws its ticks.
    panels = [panel(sr, title, unit, x, yr, last=i == len(specs) - 1, at=at)
              for i, (sr, title, unit, yr) in enumerate(specs)]
    trig = escape(name or str(snap.get("trigger")))
    cause = begin.get("cause")
    head = (f"<h3>{trig} on {escape(vehicle)}/{escape(device)}</h3><p class=small>{at} "
            f"{escape(_time(t))} UTC; episode {episode if episode is not None else '-'}"
            + (f"; cause {escape(str(cause))}" if cause else "")
            + (f"; lasted {duration:.1f} s" if isinstance(duration, (int, float)) else "")
            + f"; context {pre:g} s before, {post:g} s after"
            + (f"; campaigns {escape(', '.join(map(str, snap['campaigns'])))}" if snap.get("campaigns") else "")
            + (f"; shed for size: {escape(', '.join(map(str, snap['truncated'])))}" if snap.get("truncated") else "")
            + "</p>")
    return head + "\n".join(panels) + _kmsg_table(snap.get("kmsg") or {}, pre)


def _kmsg_table(k: dict[str, Any], pre: float) -> str:
    t, lvl, msg = expand(k.get("t")), expand(k.get("lvl")), expand(k.get("msg"))
    rows = [(ms / 1000 - pre, lv, m) for ms, lv, m in zip(t, lvl, msg, strict=False) if isinstance(ms, (int, float))]
    if not rows:
        return "<p class=small>no kernel lines in the window</p>"
    rows = sorted(sorted(rows, key=lambda r: abs(r[0]))[:MAX_KMSG])
    body = "".join(f"<tr><td>{r[0]:+.1f} s</td><td class=l>{escape(_level(r[1]))}</td>"
                   f"<td class=l><code>{escape(str(r[2]))}</code></td></tr>" for r in rows)
    return f"<table><tr><th>t</th><th class=l>level</th><th class=l>kernel line (nearest the start)</th></tr>" \
           f"{body}</table>"


def _level(v: Any) -> str:
    return LEVELS[v] if isinstance(v, int) and 0 <= v < len(LEVELS) else str(v)


def _time(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def section(store: Store, limit: int = MAX_EPISODES) -> str:
    out = ["<h2>Context around episodes</h2><p class=small>Black-box snapshots (docs/blackbox.md) of the latest "
           f"{limit} episodes that have one: the unit's CPU, memory and link signal around the episode's start "
           "(dashed red line), and the kernel lines nearest it.</p>"]
    rows = store.query(QUERY, limit)
    if not rows:
        out.append("<p class=small>no snapshots stored</p>")
    for vehicle, device, episode, t, fields, name, fields_begin, duration in rows:
        try:
            snap = json.loads(fields) if fields else {}
            begin = json.loads(fields_begin) if fields_begin else {}
        except ValueError:
            continue
        if isinstance(snap, dict):
            out.append(episode_block(vehicle, device, episode, t, snap, name,
                                     begin if isinstance(begin, dict) else {}, duration))
    return "\n".join(out)
