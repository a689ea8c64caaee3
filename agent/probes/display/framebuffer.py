"""Cheap framebuffer sampling: mmap the frame and read only a sparse grid of pixels, never the whole buffer.

Two layouts are understood:
- fbdev `/dev/fbN`, geometry from `/sys/class/graphics/fbN/{virtual_size,bits_per_pixel,stride}` (plus `modes`
  and `pan` when the device is double-buffered, to sample the buffer being scanned out);
- an XWD file as kept by `Xvfb -fbdir DIR` (`DIR/Xvfb_screen0`): a 100-byte big-endian header of 25 CARD32,
  the window name, `ncolors` 12-byte colour map entries, then the pixels. Detected by its header.

Per sample: a stat() of the path (so a framebuffer replaced by an HMI/X server restart is reopened instead of
sampling a stale mapping), one strided slice per grid row and colour byte, a CRC, and a black test done with
bytes.translate so no Python code runs per pixel.
"""

from __future__ import annotations

import mmap
import os
import re
import stat
import struct
import sys
import zlib
from collections.abc import Sequence

from ...dataclass_shared import dataclass

XWD_HEADER = struct.Struct(">25I")
XWD_FILE_VERSION = 7
XWD_ZPIXMAP = 2
MAX_DIM = 16384
MAX_REGION_ROWS = 128  # a tall region is sampled every n-th row so its cost stays bounded
# The trace (GridSampler.trace) reads whole rows, at most this many: every 3rd row of 768, every 5th of 1080, so a
# glyph 6 px tall or more is crossed at least once. 256 rows of 1920 XRGB pixels are 1.9 MiB, read in chunks of
# TRACE_CHUNK_ROWS so the copies stay under 0.3 MiB.
TRACE_ROWS = 256
TRACE_CHUNK_ROWS = 32


class FrameUnavailable(Exception):
    """No frame can be read now. `reason` is a short stable code for counters: missing, malformed,
    truncated, unreadable."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class Rect:
    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class Layout:
    kind: str                 # "xwd" or "fbdev"
    width: int
    height: int               # visible rows
    bits_per_pixel: int
    stride: int               # bytes per line
    offset: int               # file offset of the first pixel
    little_endian: bool       # pixel byte order
    masks: tuple[int, int, int]
    map_rows: int             # rows mapped (more than `height` when fbdev pans over a taller virtual screen)
    pan_path: str = ""        # fbdev `pan` attribute to read the displayed buffer's y offset from

    @property
    def map_size(self) -> int:
        return self.offset + self.stride * self.map_rows

    @property
    def bytes_per_pixel(self) -> int:
        return self.bits_per_pixel // 8

    def channel_bytes(self) -> tuple[int, ...] | None:
        """Byte index inside a pixel of each colour channel, when every mask is one whole byte."""
        out = []
        bpp = self.bytes_per_pixel
        for m in self.masks:
            if m == 0:
                return None
            shift = (m & -m).bit_length() - 1
            if m >> shift != 0xFF or shift % 8:
                return None
            idx = shift // 8
            if idx >= bpp:
                return None
            out.append(idx if self.little_endian else bpp - 1 - idx)
        return tuple(out)


def looks_like_xwd(head: bytes) -> bool:
    if len(head) < 8:
        return False
    header_size, version = struct.unpack_from(">2I", head)
    return version == XWD_FILE_VERSION and 100 <= header_size <= 65536


def parse_xwd(head: bytes, file_size: int) -> Layout:
    """Raises FrameUnavailable("malformed"/"truncated") for headers that cannot describe this file."""
    if len(head) < XWD_HEADER.size:
        raise FrameUnavailable("malformed", f"XWD header truncated at {len(head)} bytes")
    h = XWD_HEADER.unpack_from(head)
    header_size, version, fmt, _depth, width, height = h[:6]
    byte_order, bpp, stride = h[7], h[11], h[12]
    masks = (h[14], h[15], h[16])
    ncolors = h[19]
    if version != XWD_FILE_VERSION or header_size < XWD_HEADER.size:
        raise FrameUnavailable("malformed", f"not an XWD v7 header (version {version}, size {header_size})")
    if fmt != XWD_ZPIXMAP or bpp not in (16, 24, 32):
        raise FrameUnavailable("malformed", f"unsupported XWD pixmap format {fmt} / {bpp} bpp")
    if not (0 < width <= MAX_DIM and 0 < height <= MAX_DIM) or stride < width * bpp // 8 or ncolors > 65536:
        raise FrameUnavailable("malformed", f"implausible XWD geometry {width}x{height} stride {stride}")
    offset = header_size + ncolors * 12
    layout = Layout("xwd", width, height, bpp, stride, offset, byte_order == 0, masks, height)
    if layout.map_size > file_size:
        raise FrameUnavailable("truncated", f"XWD file has {file_size} bytes, header says {layout.map_size}")
    return layout


def make_xwd_header(width: int, height: int, *, bits_per_pixel: int = 32, ncolors: int = 256,
                    name: bytes = b"icvq\0") -> bytes:
    """For tests, simulators and benchmarks: the header and colour map Xvfb writes for a TrueColor screen
    (pixels, width * height * bits_per_pixel / 8 bytes in little-endian order, go right after)."""
    masks = (0xFF0000, 0x00FF00, 0x0000FF) if bits_per_pixel >= 24 else (0xF800, 0x07E0, 0x001F)
    depth = 24 if bits_per_pixel >= 24 else 16
    fields = (XWD_HEADER.size + len(name), XWD_FILE_VERSION, XWD_ZPIXMAP, depth, width, height, 0,
              0, 32, 0, 32, bits_per_pixel, width * bits_per_pixel // 8, 4, *masks, 8, 256, ncolors,
              width, height, 0, 0, 0)
    return XWD_HEADER.pack(*fields) + name + bytes(12 * ncolors)


def _read_attr(path: str) -> str:
    with open(path, "rb") as f:
        return f.read(256).decode("ascii", "replace").strip()


# fbdev does not export its channel layout in sysfs; these are the layouts drivers use for each depth.
_FBDEV_MASKS = {32: (0xFF0000, 0x00FF00, 0x0000FF), 24: (0xFF0000, 0x00FF00, 0x0000FF),
                16: (0xF800, 0x07E0, 0x001F)}
_MODE = re.compile(r":(\d+)x(\d+)")


def fbdev_layout(sysfs_root: str, name: str) -> Layout:
    d = os.path.join(sysfs_root, "class", "graphics", name)
    try:
        vw, vh = (int(v) for v in _read_attr(f"{d}/virtual_size").split(","))
        bpp = int(_read_attr(f"{d}/bits_per_pixel"))
        stride = int(_read_attr(f"{d}/stride"))
    except (OSError, ValueError) as e:
        raise FrameUnavailable("malformed", f"no XWD header and no fbdev geometry under {d}: {e}") from None
    if bpp not in _FBDEV_MASKS or not (0 < vw <= MAX_DIM and 0 < vh <= 2 * MAX_DIM) or stride < vw * bpp // 8:
        raise FrameUnavailable("malformed", f"unsupported fbdev geometry {vw}x{vh} {bpp} bpp stride {stride}")
    width, height, pan = vw, vh, ""
    try:
        # "U:1280x720p-60": the visible mode, smaller than the virtual size when the driver double-buffers.
        m = _MODE.search(_read_attr(f"{d}/modes").splitlines()[0])
        if m and 0 < int(m[1]) <= vw and 0 < int(m[2]) <= vh:
            width, height = int(m[1]), int(m[2])
    except (OSError, IndexError):
        pass
    if height < vh and os.path.exists(f"{d}/pan"):
        pan = f"{d}/pan"
    return Layout("fbdev", width, height, bpp, stride, 0, sys.byteorder == "little", _FBDEV_MASKS[bpp], vh, pan)


@dataclass(frozen=True)
class FrameSample:
    grid: int                         # CRC of the sparse grid outside the expected-change regions
    regions: tuple[int | None, ...]   # CRC per region; None when the region lies outside the frame
    bright_fraction: float            # share of grid pixels brighter than black_level
    black: bool
    # Per region: share of its sampled pixels brighter than black_level (None outside the frame). A dark theme
    # is nearly black on the grid but lit where its live UI (a clock) is: rules.py tells the two apart by these.
    region_lit: tuple[float | None, ...] = ()
    # Share of lit pixels over whole rows (GridSampler.trace), looked at only when no grid pixel is lit: under DRM
    # a thin clock between grid points still keeps a dark UI alive. None = not looked at.
    trace_lit: float | None = None


@dataclass
class _Plan:
    yoff: int
    # One list of row slices per sampled byte position: grid points outside the regions (hashed), and the
    # grid points inside them (only counted for the black test, which must see the whole screen).
    outside: list[list[slice]]
    inside: list[list[slice]]
    n_pixels: int
    # Per region: its rows (at most MAX_REGION_ROWS), each a slice of whole pixels; None outside the frame.
    region_rows: list[list[slice] | None]
    byte_positions: tuple[int, ...]     # the colour bytes inside a pixel


def _grid_positions(size: int, n: int) -> tuple[int, int, int]:
    step = max(1, size // n)
    first = step // 2
    count = min(n, (size - first + step - 1) // step)
    return first, step, count


class GridSampler:
    """The sparse grid CRC, region CRCs and black test over any buffer holding a frame in `layout` (an mmap of
    fbdev, an XWD file or a DRM scanout buffer). Plans (the slices to read) are cached per layout and pan offset."""

    def __init__(self, *, grid_cols: int = 64, grid_rows: int = 36, black_level: int = 16,
                 black_fraction: float = 0.98, regions: Sequence[Rect] = ()) -> None:
        self.grid_cols = grid_cols
        self.grid_rows = grid_rows
        self.black_fraction = black_fraction
        self.black_level = black_level
        self.regions = tuple(regions)
        self._plan: _Plan | None = None
        self._plan_key: tuple[Layout, int] | None = None
        self._channels: tuple[int, ...] | None = None
        # byte -> 1 when brighter than black_level: lets C code count bright pixels (see _bright).
        self._bright_table = bytes(0 if v <= black_level else 1 for v in range(256))
        self._trace_hint = 0  # the trace's chunk that last held a lit pixel: where the next trace starts

    def sample(self, buf: mmap.mmap | bytes, layout: Layout, yoff: int = 0) -> FrameSample:
        if self._plan is None or self._plan_key != (layout, yoff):
            self._channels = layout.channel_bytes() if layout.bits_per_pixel in (24, 32) else None
            self._plan, self._plan_key = self._make_plan(layout, yoff), (layout, yoff)
        plan = self._plan
        streams = [b"".join([buf[s] for s in row_slices]) for row_slices in plan.outside]
        crc = 0
        for data in streams:
            crc = zlib.crc32(data, crc)
        if plan.inside[0]:
            streams = [out + b"".join([buf[s] for s in row_slices])
                       for out, row_slices in zip(streams, plan.inside, strict=True)]
        region_crcs: list[int | None] = []
        region_lit: list[float | None] = []
        bpp = layout.bytes_per_pixel
        for rows in plan.region_rows:
            if rows is None:
                region_crcs.append(None)
                region_lit.append(None)
                continue
            # Colour bytes only: a padding or alpha byte (the X of XRGB8888) is not part of the picture and some
            # writers leave garbage there. Rows are whole pixels, so one stride over the joined rows is a channel.
            raw = b"".join([buf[s] for s in rows])
            rstreams = [raw[c::bpp] for c in plan.byte_positions]
            rc = 0
            for data in rstreams:
                rc = zlib.crc32(data, rc)
            region_crcs.append(rc)
            n = len(rstreams[0])
            region_lit.append(round(self._bright(rstreams, layout) / n, 6) if n else 0.0)
        bright = self._bright(streams, layout) / plan.n_pixels if plan.n_pixels else 0.0
        return FrameSample(crc, tuple(region_crcs), bright, bright <= 1.0 - self.black_fraction, tuple(region_lit))

    def trace(self, buf: mmap.mmap | bytes, layout: Layout, yoff: int = 0) -> float | None:
        """Share of lit pixels over whole rows, every n-th one (at most TRACE_ROWS): the second look for a frame
        whose grid found no lit pixel at all. A thin dark-theme clock can sit between grid points (a 16 px grid
        pitch against 1 px strokes: the VM's dark terminal clock was missed at some times of day), so "no lit grid
        pixel" is not "no lit pixel". None for packed formats (RGB565: a Python loop per pixel would cost
        seconds).

        The rows are read in chunks of TRACE_CHUNK_ROWS and the trace stops at the first chunk with a lit pixel
        (the share is then of the rows read): only "any lit pixel" decides, and a whole 1920 x 1080 trace costs
        about two whole-frame CRC32s (tools/bench/display.py: 5.8 ms against 3.0 ms). It starts at the chunk
        where it last found one, so a dark UI's clock costs one chunk per trace; a black frame costs them all.
        Only on demand: the DRM helper asks once per new buffer (scanout_helper.py)."""
        if layout.bits_per_pixel not in (24, 32) or layout.width <= 0 or layout.height <= 0:
            return None
        channels = layout.channel_bytes()
        if channels is None:
            return None
        bpp = layout.bytes_per_pixel
        step = max(1, -(-layout.height // TRACE_ROWS))
        row_bytes = layout.width * bpp
        starts = [layout.offset + (y + yoff) * layout.stride for y in range(step // 2, layout.height, step)]
        chunks = list(range(0, len(starts), TRACE_CHUNK_ROWS))
        first = self._trace_hint if self._trace_hint < len(chunks) else 0
        rows = 0
        for k in chunks[first:] + chunks[:first]:
            part = starts[k:k + TRACE_CHUNK_ROWS]
            raw = b"".join([buf[a:a + row_bytes] for a in part])
            rows += len(part)
            lit = _count_lit([raw[c::bpp] for c in channels], self._bright_table)
            if lit:
                self._trace_hint = k // TRACE_CHUNK_ROWS
                return round(lit / (rows * layout.width), 6)
        return 0.0

    def _make_plan(self, layout: Layout, yoff: int) -> _Plan:
        bpp = layout.bytes_per_pixel
        byte_positions = self._channels if self._channels is not None else tuple(range(bpp))
        x0, sx, nx = _grid_positions(layout.width, self.grid_cols)
        y0, sy, ny = _grid_positions(layout.height, self.grid_rows)
        clipped = [self._clip(r, layout) for r in self.regions]
        outside: list[list[slice]] = [[] for _ in byte_positions]
        inside: list[list[slice]] = [[] for _ in byte_positions]
        for j in range(ny):
            y = y0 + j * sy
            base = layout.offset + (y + yoff) * layout.stride
            # Grid points inside an expected-change region are hashed apart: a ticking clock must not count as
            # "the screen changed" when we ask whether a touch got an answer.
            flags = [False] * nx
            for r in clipped:
                if r and r.y <= y < r.y + r.height:
                    for i in range(nx):
                        if r.x <= x0 + i * sx < r.x + r.width:
                            flags[i] = True
            i = 0
            while i < nx:
                k = i
                while k < nx and flags[k] == flags[i]:
                    k += 1
                first, last = x0 + i * sx, x0 + (k - 1) * sx
                target = inside if flags[i] else outside
                for s, c in zip(target, byte_positions, strict=True):
                    s.append(slice(base + first * bpp + c, base + last * bpp + c + 1, sx * bpp))
                i = k
        region_rows: list[list[slice] | None] = []
        for r in clipped:
            if r is None:
                region_rows.append(None)
                continue
            step = max(1, -(-r.height // MAX_REGION_ROWS))
            rows = [layout.offset + (y + yoff) * layout.stride + r.x * bpp for y in range(r.y, r.y + r.height, step)]
            region_rows.append([slice(a, a + r.width * bpp) for a in rows])
        return _Plan(yoff, outside, inside, nx * ny, region_rows, tuple(byte_positions))

    @staticmethod
    def _clip(r: Rect, layout: Layout) -> Rect | None:
        x1, y1 = min(r.x + r.width, layout.width), min(r.y + r.height, layout.height)
        if r.x >= x1 or r.y >= y1:
            return None
        return Rect(r.x, r.y, x1 - r.x, y1 - r.y)

    def _bright(self, streams: list[bytes], layout: Layout) -> int:
        """How many sampled pixels have any colour channel above black_level."""
        if self._channels is not None:
            return _count_lit(streams, self._bright_table)
        return _bright_generic(streams, layout, self.black_level)


def _count_lit(channel_streams: list[bytes], bright_table: bytes) -> int:
    """Pixels with any channel above black_level, given one stream per colour channel (one byte per pixel)."""
    acc = 0
    for data in channel_streams:
        # One byte per pixel, 0 or 1 after translate; OR-ing them as big integers ORs per pixel.
        acc |= int.from_bytes(data.translate(bright_table), "little")
    return acc.bit_count()


class FrameReader:
    def __init__(self, path: str, *, fmt: str = "auto", sysfs_root: str = "/sys", grid_cols: int = 64,
                 grid_rows: int = 36, black_level: int = 16, black_fraction: float = 0.98,
                 regions: Sequence[Rect] = ()) -> None:
        self.path = path
        self.fmt = fmt
        self.sysfs_root = sysfs_root
        self.grid = GridSampler(grid_cols=grid_cols, grid_rows=grid_rows, black_level=black_level,
                                black_fraction=black_fraction, regions=regions)
        self.regions = self.grid.regions
        self.layout: Layout | None = None
        self.opens = 0
        self._mm: mmap.mmap | None = None
        self._ident: tuple[int, int] | None = None
        self._is_reg = False

    # -- lifecycle ------------------------------------------------------------------------------------
    def close(self) -> None:
        if self._mm is not None:
            try:
                self._mm.close()
            except (BufferError, ValueError):
                pass
        self._mm = None
        self._ident = None
        self.layout = None

    def _open(self, st: os.stat_result) -> None:
        self.close()
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FrameUnavailable("missing", self.path) from None
        except OSError as e:
            raise FrameUnavailable("unreadable", f"{self.path}: {e.strerror}") from None
        try:
            head = os.pread(fd, 4096, 0)
            is_reg = stat.S_ISREG(st.st_mode)
            kind = self.fmt
            if kind == "auto":
                kind = "xwd" if looks_like_xwd(head) else "fbdev"
            if kind == "xwd":
                layout = parse_xwd(head, st.st_size if is_reg else 1 << 62)
            else:
                layout = fbdev_layout(self.sysfs_root, os.path.basename(self.path))
                if is_reg and st.st_size < layout.map_size:
                    raise FrameUnavailable("truncated", f"{self.path} has {st.st_size} bytes, needs {layout.map_size}")
            try:
                mm = mmap.mmap(fd, layout.map_size, mmap.MAP_SHARED, mmap.PROT_READ)
            except (OSError, ValueError) as e:
                raise FrameUnavailable("unreadable", f"mmap {self.path}: {e}") from None
        finally:
            os.close(fd)  # the mapping keeps its own reference to the file
        self._mm = mm
        self._ident = (st.st_dev, st.st_ino)
        self._is_reg = is_reg
        self.layout = layout
        self.opens += 1

    def _current(self) -> mmap.mmap:
        """The mapping for what is at `path` now; reopens after a replacement, refuses a shrunk file (reading
        past its end would raise SIGBUS)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.close()
            raise FrameUnavailable("missing", self.path) from None
        except OSError as e:
            self.close()
            raise FrameUnavailable("unreadable", f"{self.path}: {e.strerror}") from None
        if self._mm is None or self._ident != (st.st_dev, st.st_ino):
            self._open(st)
        elif self._is_reg and self.layout is not None and st.st_size < self.layout.map_size:
            self.close()
            raise FrameUnavailable("truncated", f"{self.path} shrank to {st.st_size} bytes")
        assert self._mm is not None
        return self._mm

    # -- sampling -------------------------------------------------------------------------------------
    def _pan_offset(self, layout: Layout) -> int:
        if not layout.pan_path:
            return 0
        try:
            yoff = int(_read_attr(layout.pan_path).split(",")[1])
        except (OSError, ValueError, IndexError):
            return 0
        return max(0, min(yoff, layout.map_rows - layout.height))

    def sample(self) -> FrameSample:
        mm = self._current()
        layout = self.layout
        assert layout is not None
        return self.grid.sample(mm, layout, self._pan_offset(layout))


def _bright_generic(streams: list[bytes], layout: Layout, level: int) -> int:
    """Slow path for packed formats (RGB565 and the like): assemble each pixel and scale its channels."""
    order = streams if layout.little_endian else streams[::-1]
    shifts = [((m & -m).bit_length() - 1, m) for m in layout.masks if m]
    count = 0
    for i in range(len(streams[0])):
        v = 0
        for k, s in enumerate(order):
            v |= s[i] << (8 * k)
        for shift, m in shifts:
            top = m >> shift
            if ((v & m) >> shift) * 255 // top > level:
                count += 1
                break
    return count
