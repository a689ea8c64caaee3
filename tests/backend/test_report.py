"""The HTML report: self-contained, and it really renders with its plots in headless Chromium."""

from __future__ import annotations

import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

from backend_util import REPO

from tools.ingest.store import SqliteStore
from tools.sim import fleet_model as M
from tools.sim.fleet_direct import load


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB/RGBA PNG into rows (enough of PNG for a screenshot; no imaging library needed)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, bpp = 8, b"", 0, 0, 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b, c = prev[x], prev[x - bpp] if x >= bpp else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, bpp, rows


def test_report_is_self_contained_and_renders_its_plots(tmp_path: Path, chromium: str) -> None:
    db = tmp_path / "fleet.db"
    store = SqliteStore(db, synchronous="OFF")
    load(store, M.fleet(150, 3, 40, M.Mix(degrading=0.1)))
    store.close()
    out = tmp_path / "report.html"
    subprocess.run([sys.executable, "-m", "tools.ingest", "report", "--db", str(db), "-o", str(out)], cwd=REPO,
                   check=True, capture_output=True, timeout=120)
    html = out.read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the report must not fetch anything"
    assert "<script" not in html
    assert html.count("<svg") >= 5
    assert "hmi" in html and "3.3.0" in html and "regression" in html  # the injected regression is flagged

    shot = tmp_path / "report.png"
    res = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-component-update", "--no-first-run", "--hide-scrollbars",
                          f"--user-data-dir={tmp_path / 'chromium'}", f"--screenshot={shot}", "--window-size=900,1000",
                          out.as_uri()], capture_output=True, text=True, timeout=90)
    assert shot.exists(), res.stderr[-2000:]
    width, bpp, rows = png_pixels(shot.read_bytes())
    non_white = sum(1 for row in rows for x in range(0, len(row), bpp) if row[x:x + 3] != b"\xff\xff\xff")
    blue = sum(1 for row in rows for x in range(0, len(row), bpp)
               if row[x + 2] > 150 and row[x] < 80)  # the charts' blue (#1f77b4)
    assert non_white > 0.03 * width * len(rows), "screenshot is blank"
    assert blue > 500, "no chart drawn"
