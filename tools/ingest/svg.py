"""Tiny inline-SVG charts for the HTML report: no JavaScript, no external files, readable source.

Each function returns one `<svg>` element with axes, ticks and labels; colours come from one palette.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f")
FONT = 'font-family="sans-serif" font-size="11"'


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0]
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    out = []
    x = start
    while x <= hi + step * 1e-9:
        out.append(round(x, 10))
        x += step
    return out


def fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.0f}"
    if abs(v) >= 1:
        return f"{v:.1f}".rstrip("0").rstrip(".")
    return f"{v:.2g}"


class Frame:
    """Plot area with linear scales; the margins leave room for tick labels."""

    def __init__(self, width: int, height: int, x: tuple[float, float], y: tuple[float, float],
                 left: int = 56, right: int = 12, top: int = 14, bottom: int = 34) -> None:
        self.w, self.h = width, height
        self.left, self.right, self.top, self.bottom = left, right, top, bottom
        self.x0, self.x1 = x if x[1] > x[0] else (x[0], x[0] + 1)
        self.y0, self.y1 = y if y[1] > y[0] else (y[0], y[0] + 1)

    def sx(self, v: float) -> float:
        return self.left + (v - self.x0) / (self.x1 - self.x0) * (self.w - self.left - self.right)

    def sy(self, v: float) -> float:
        return self.h - self.bottom - (v - self.y0) / (self.y1 - self.y0) * (self.h - self.top - self.bottom)

    def axes(self, xticks: Sequence[float], yticks: Sequence[float], xfmt: Callable[[float], str] = fmt,
             yfmt: Callable[[float], str] = fmt, xlabel: str = "", ylabel: str = "") -> str:
        out = [f'<line x1="{self.left}" y1="{self.sy(self.y0):.1f}" x2="{self.w - self.right}" '
               f'y2="{self.sy(self.y0):.1f}" stroke="#333"/>',
               f'<line x1="{self.left}" y1="{self.top}" x2="{self.left}" y2="{self.h - self.bottom}" stroke="#333"/>']
        for t in yticks:
            if self.y0 <= t <= self.y1:
                y = self.sy(t)
                out.append(f'<line x1="{self.left}" y1="{y:.1f}" x2="{self.w - self.right}" y2="{y:.1f}" '
                           'stroke="#e5e5e5"/>')
                out.append(f'<text x="{self.left - 4}" y="{y + 4:.1f}" text-anchor="end" {FONT}>'
                           f'{escape(yfmt(t))}</text>')
        for t in xticks:
            if self.x0 <= t <= self.x1:
                x = self.sx(t)
                out.append(f'<line x1="{x:.1f}" y1="{self.h - self.bottom}" x2="{x:.1f}" '
                           f'y2="{self.h - self.bottom + 4}" stroke="#333"/>')
                out.append(f'<text x="{x:.1f}" y="{self.h - self.bottom + 15}" text-anchor="middle" {FONT}>'
                           f'{escape(xfmt(t))}</text>')
        if xlabel:
            out.append(f'<text x="{(self.left + self.w - self.right) / 2:.0f}" y="{self.h - 3}" '
                       f'text-anchor="middle" {FONT}>{escape(xlabel)}</text>')
        if ylabel:
            out.append(f'<text transform="translate(12,{(self.top + self.h - self.bottom) / 2:.0f}) rotate(-90)" '
                       f'text-anchor="middle" {FONT}>{escape(ylabel)}</text>')
        return "\n".join(out)


def svg(width: int, height: int, body: str, title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}"><title>{escape(title)}</title>'
            f'<rect width="{width}" height="{height}" fill="#fff"/>\n{body}\n</svg>')


def line_chart(series: dict[str, list[tuple[float, float]]], title: str, *, width: int = 720, height: int = 260,
               xfmt: Callable[[float], str] = fmt, xlabel: str = "", ylabel: str = "") -> str:
    pts = [p for s in series.values() for p in s]
    if not pts:
        return svg(width, 60, f'<text x="10" y="30" {FONT}>no data</text>', title)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    fr = Frame(width - 200, height, (min(xs), max(xs)), (0, max(ys) * 1.1 or 1))
    body = [fr.axes(nice_ticks(fr.x0, fr.x1, 6), nice_ticks(0, fr.y1), xfmt, fmt, xlabel, ylabel)]
    for i, (name, s) in enumerate(series.items()):
        c = PALETTE[i % len(PALETTE)]
        path = " ".join(f"{'M' if j == 0 else 'L'}{fr.sx(x):.1f},{fr.sy(y):.1f}" for j, (x, y) in enumerate(s))
        body.append(f'<path d="{path}" fill="none" stroke="{c}" stroke-width="1.8"/>')
        body += [f'<circle cx="{fr.sx(x):.1f}" cy="{fr.sy(y):.1f}" r="2.2" fill="{c}"/>' for x, y in s]
        ly = 20 + i * 16
        body.append(f'<rect x="{width - 190}" y="{ly - 9}" width="10" height="10" fill="{c}"/>'
                    f'<text x="{width - 175}" y="{ly}" {FONT}>{escape(name)}</text>')
    return svg(width, height, "\n".join(body), title)


def dot_ci_chart(rows: Sequence[tuple[str, float, float, float, bool]], title: str, *, width: int = 720,
                 xlabel: str = "") -> str:
    """One row per item: (label, value, low, high, highlighted) — a dot with its interval."""
    if not rows:
        return svg(width, 60, f'<text x="10" y="30" {FONT}>no data</text>', title)
    height = 40 + 18 * len(rows)
    hi = max(max(r[3] for r in rows if math.isfinite(r[3])), max(r[1] for r in rows)) * 1.05 or 1
    fr = Frame(width, height, (0, hi), (0, len(rows)), left=320, bottom=30, top=6)
    body = [fr.axes(nice_ticks(0, hi), [], fmt, fmt, xlabel)]
    for i, (label, v, lo, up, mark) in enumerate(rows):
        y = fr.sy(len(rows) - i - 0.5)
        c = PALETTE[1] if mark else PALETTE[0]
        weight = ' font-weight="bold"' if mark else ""
        body.append(f'<text x="{fr.left - 6}" y="{y + 4:.1f}" text-anchor="end" {FONT}{weight}>'
                    f'{escape(label)}</text>')
        body.append(f'<line x1="{fr.sx(lo):.1f}" y1="{y:.1f}" x2="{fr.sx(min(up, hi)):.1f}" y2="{y:.1f}" '
                    f'stroke="{c}" stroke-width="2"/>')
        body.append(f'<circle cx="{fr.sx(v):.1f}" cy="{y:.1f}" r="3.5" fill="{c}"/>')
    return svg(width, height, "\n".join(body), title)


def histogram(bins: Sequence[tuple[float, float, int]], title: str, *, width: int = 350, height: int = 200,
              log_x: bool = True, marks: Sequence[tuple[str, float]] = (), xlabel: str = "") -> str:
    """bins: (low edge, high edge, count); log_x draws edges on a log10 axis (recovery times span decades)."""
    if not bins:
        return svg(width, 60, f'<text x="10" y="30" {FONT}>no data</text>', title)

    def tx(v: float) -> float:
        return math.log10(max(v, 1e-3)) if log_x else v

    fr = Frame(width, height, (tx(bins[0][0]), tx(bins[-1][1])), (0, max(b[2] for b in bins) * 1.1 or 1), left=40)
    xt = [float(e) for e in range(math.ceil(fr.x0), math.floor(fr.x1) + 1)] if log_x else nice_ticks(fr.x0, fr.x1)
    body = [fr.axes(xt, nice_ticks(0, fr.y1, 4), (lambda v: fmt(10 ** v)) if log_x else fmt, fmt, xlabel)]
    for lo, hi, n in bins:
        x0, x1 = fr.sx(tx(lo)), fr.sx(tx(hi))
        body.append(f'<rect x="{x0:.1f}" y="{fr.sy(n):.1f}" width="{max(x1 - x0 - 1, 1):.1f}" '
                    f'height="{fr.sy(0) - fr.sy(n):.1f}" fill="{PALETTE[0]}"/>')
    for i, (name, v) in enumerate(marks):
        x = fr.sx(tx(v))
        body.append(f'<line x1="{x:.1f}" y1="{fr.top}" x2="{x:.1f}" y2="{fr.sy(0):.1f}" stroke="{PALETTE[1]}" '
                    f'stroke-dasharray="3,2"/><text x="{x + 3:.1f}" y="{fr.top + 10 + 11 * i}" {FONT} '
                    f'fill="{PALETTE[1]}">{escape(name)}</text>')
    return svg(width, height, "\n".join(body), title)


def bar_chart(rows: Sequence[tuple[str, float, bool]], title: str, *, width: int = 720, rule: float | None = None,
              xlabel: str = "") -> str:
    """Horizontal bars (label, value, highlighted); `rule` draws a reference line (e.g. the alarm threshold)."""
    if not rows:
        return svg(width, 60, f'<text x="10" y="30" {FONT}>none</text>', title)
    height = 40 + 18 * len(rows)
    hi = max(max(r[1] for r in rows), rule or 0) * 1.05 or 1
    fr = Frame(width, height, (0, hi), (0, len(rows)), left=340, bottom=30, top=6)
    body = [fr.axes(nice_ticks(0, hi), [], fmt, fmt, xlabel)]
    for i, (label, v, mark) in enumerate(rows):
        y = fr.sy(len(rows) - i)
        body.append(f'<text x="{fr.left - 6}" y="{y + 13:.1f}" text-anchor="end" {FONT}>{escape(label)}</text>')
        body.append(f'<rect x="{fr.left}" y="{y + 3:.1f}" width="{fr.sx(v) - fr.left:.1f}" height="12" '
                    f'fill="{PALETTE[1] if mark else PALETTE[0]}"/>')
    if rule is not None:
        x = fr.sx(rule)
        body.append(f'<line x1="{x:.1f}" y1="{fr.top}" x2="{x:.1f}" y2="{fr.sy(0):.1f}" stroke="#333" '
                    'stroke-dasharray="4,3"/>')
    return svg(width, height, "\n".join(body), title)
