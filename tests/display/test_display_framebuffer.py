"""FrameReader on generated XWD files and a fake fbdev (a regular file plus a fake sysfs tree)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from agent.probes.display.framebuffer import FrameReader, FrameUnavailable, Rect, make_xwd_header

W, H = 64, 32


def xwd(path: Path, pixels: bytearray | None = None, width: int = W, height: int = H) -> bytearray:
    px = pixels if pixels is not None else bytearray(b"\xff\xff\xff\x00" * width * height)
    path.write_bytes(make_xwd_header(width, height) + bytes(px))
    return px


def poke(path: Path, x: int, y: int, rgb: tuple[int, int, int], width: int = W) -> None:
    """Change one pixel in place, as an X server writing into its mapped file does."""
    head = len(make_xwd_header(width, 1))
    with open(path, "r+b") as f:
        f.seek(head + (y * width + x) * 4)
        f.write(bytes((rgb[2], rgb[1], rgb[0], 0)))


def reader(path: Path, **kw: object) -> FrameReader:
    return FrameReader(str(path), grid_cols=8, grid_rows=4, **kw)  # type: ignore[arg-type]


def test_grid_change_black_and_regions(tmp_path: Path) -> None:
    p = tmp_path / "Xvfb_screen0"
    xwd(p)
    # Grid: columns every 8 px from x=4, rows every 8 px from y=4. The region covers grid point (4, 4).
    r = reader(p, regions=[Rect(0, 0, 10, 10), Rect(500, 500, 4, 4)])
    a = r.sample()
    assert not a.black and a.bright_fraction == 1.0 and a.regions[1] is None  # second region is off-frame
    assert r.sample() == a
    poke(p, 4, 4, (0, 0, 0))                    # inside the region: region changes, the grid does not
    b = r.sample()
    assert b.grid == a.grid and b.regions[0] != a.regions[0]
    assert b.bright_fraction == pytest.approx(31 / 32)  # but the black test still sees the whole screen
    poke(p, 12, 20, (1, 2, 3))                  # a grid point outside the region
    c = r.sample()
    assert c.grid != b.grid and c.regions[0] == b.regions[0]
    poke(p, 13, 20, (200, 0, 0))                # between grid points: the sparse grid does not see it
    assert r.sample().grid == c.grid
    r.close()


def test_black_with_threshold(tmp_path: Path) -> None:
    p = tmp_path / "Xvfb_screen0"
    xwd(p, bytearray(b"\x08\x08\x08\x00" * W * H))  # dark grey below black_level 16 counts as black
    r = reader(p)
    s = r.sample()
    assert s.black and s.bright_fraction == 0.0
    poke(p, 4, 4, (255, 255, 255))              # 1 of 32 grid points lit: 97% black < 98%
    assert not r.sample().black
    r.close()
    assert reader(p, black_fraction=0.96).sample().black


def test_disappearing_and_replaced_framebuffer(tmp_path: Path) -> None:
    p = tmp_path / "Xvfb_screen0"
    xwd(p)
    r = reader(p)
    first = r.sample()
    p.unlink()                                  # X server / HMI restart
    with pytest.raises(FrameUnavailable) as e:
        r.sample()
    assert e.value.reason == "missing" and r.layout is None
    xwd(p, bytearray(b"\x00\x00\xff\x00" * W * H))
    again = r.sample()
    assert r.opens == 2 and again.grid != first.grid
    tmp = tmp_path / "new"
    xwd(tmp, width=32, height=16)
    os.replace(tmp, p)                          # replaced under the same name: must not read the old mapping
    r.sample()
    assert r.opens == 3 and r.layout is not None and r.layout.width == 32
    r.close()


def test_truncated_files_never_fault(tmp_path: Path) -> None:
    p = tmp_path / "Xvfb_screen0"
    xwd(p)
    r = reader(p)
    r.sample()
    with open(p, "r+b") as f:                   # shrinks under the live mapping: reading would SIGBUS
        f.truncate(200)
    with pytest.raises(FrameUnavailable) as e:
        r.sample()
    assert e.value.reason in ("truncated", "malformed")
    p.write_bytes(make_xwd_header(W, H)[:50])   # header cut short
    with pytest.raises(FrameUnavailable) as e:
        r.sample()
    assert e.value.reason == "malformed"
    p.write_bytes(b"not a frame at all")        # neither XWD nor an fbdev with sysfs geometry
    with pytest.raises(FrameUnavailable) as e:
        FrameReader(str(p), sysfs_root=str(tmp_path)).sample()
    assert e.value.reason == "malformed"


def fake_fbdev(tmp: Path, width: int, height: int, virtual_height: int, pan: int = 0) -> Path:
    g = tmp / "sys" / "class" / "graphics" / "fb0"
    g.mkdir(parents=True)
    (g / "virtual_size").write_text(f"{width},{virtual_height}\n")
    (g / "bits_per_pixel").write_text("16\n")
    (g / "stride").write_text(f"{width * 2}\n")
    (g / "modes").write_text(f"U:{width}x{height}p-60\n")
    (g / "pan").write_text(f"0,{pan}\n")
    dev = tmp / "dev"
    dev.mkdir()
    fb = dev / "fb0"
    fb.write_bytes(bytes(width * virtual_height * 2))   # RGB565, all black
    return fb


def test_fbdev_rgb565_double_buffered(tmp_path: Path) -> None:
    fb = fake_fbdev(tmp_path, 40, 20, 40, pan=20)
    # The back buffer (rows 0..19) is white; the scanned-out one (rows 20..39, per `pan`) is black.
    with open(fb, "r+b") as f:
        f.write(struct.pack("<H", 0xFFFF) * 40 * 20)
    r = FrameReader(str(fb), sysfs_root=str(tmp_path / "sys"), grid_cols=8, grid_rows=4)
    s = r.sample()
    assert r.layout is not None and r.layout.kind == "fbdev" and r.layout.height == 20
    assert s.black
    (tmp_path / "sys/class/graphics/fb0/pan").write_text("0,0\n")   # page flip
    assert not r.sample().black
    r.close()
