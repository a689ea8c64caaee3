"""`icvq-drm-sampler`: the one privileged piece of the display probe. It reads the pixels a DRM/KMS primary plane
scans out and answers the agent with numbers only — grid CRC, region CRCs, lit fraction, black flag, the fb_id and
geometry it sampled — never pixels, so even a compromised agent cannot scrape the screen through it.

Why a separate process: GETFB2 hands out a buffer handle only to the DRM master (the compositor) or to a
CAP_SYS_ADMIN process (shared/notes/drm-rig.md: as an ordinary user the handle is 0). CAP_SYS_ADMIN is far too
much for the agent, which parses network-facing config and talks MQTT; this helper is ~150 lines, takes no input
but a bounded JSON request on a local socket, and runs under its own unit (systemd/icvq-drm-sampler.service) with
everything else taken away. One thread, one select loop: requests are rare (the agent asks `fb_interval_s`, 2/s by
default) and each costs a few ioctls, an mmap and ~2,300 grid pixels.

Protocol (SOCK_SEQPACKET, one datagram each way, JSON, ≤ 4 KiB request):
  request  {"v": 1, "grid": [cols, rows], "black_level": 16, "black_fraction": 0.98, "regions": [[x, y, w, h], ...]}
  response {"v": 1, "ok": true, "plane": id, "crtc": id, "fb_id": id, "width": w, "height": h, "format": "XR24",
            "modifier": 0, "grid": crc, "regions": [crc | null, ...], "region_lit": [fraction | null, ...],
            "lit": fraction, "black": bool, "trace_lit": fraction | null}
        or {"v": 1, "ok": false, "reason": "no_plane" | "no_handle" | "unsupported_format" | ..., "detail": str}
`trace_lit` is the lit share over whole rows (GridSampler.trace), given only when no grid pixel is lit: a thin
dark-theme clock between grid points. Traced once per buffer (fb_id) and black level, then answered from memory
until the plane shows another buffer: a dark UI flipping once a second costs one trace a second (one 32-row chunk,
where its lit pixels were last found, 0.24 MiB at 1920 px wide), a black buffer every chunk (1.9 MiB), a still
console none after the first.
A primary plane with no framebuffer or no CRTC scans out nothing: answered as an all-black 0x0 frame.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from .drm import (
    DrmError,
    Plane,
    PropertyNames,
    fourcc,
    gem_close,
    mapped,
    open_card,
    primary_plane_ids,
    primary_planes,
    scanout_fb,
)
from .framebuffer import GridSampler, Layout, Rect

log = logging.getLogger("icvq.drm_sampler")

MAX_REQUEST = 4096
MAX_REGIONS = 32
MAX_GRID = 256
MAX_CLIENTS = 4
# Little-endian 32-bit formats: byte order of (R, G, B) inside a pixel, as channel masks for framebuffer.Layout.
_XRGB = (0xFF0000, 0x00FF00, 0x0000FF)
_XBGR = (0x0000FF, 0x00FF00, 0xFF0000)
FORMATS: dict[str, tuple[int, tuple[int, int, int]]] = {
    "XR24": (32, _XRGB), "AR24": (32, _XRGB), "XB24": (32, _XBGR), "AB24": (32, _XBGR),
    "RG16": (16, (0xF800, 0x07E0, 0x001F)),
}


class BadRequest(ValueError):
    pass


def parse_request(data: bytes) -> dict[str, Any]:
    """Validate a request; anything unexpected is refused (the socket is the helper's only input)."""
    if len(data) > MAX_REQUEST:
        raise BadRequest("request too large")
    try:
        req = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("not JSON") from None
    if not isinstance(req, dict) or req.get("v") != 1:
        raise BadRequest("not a v1 request")
    unknown = set(req) - {"v", "grid", "black_level", "black_fraction", "regions"}
    if unknown:
        raise BadRequest(f"unknown keys {sorted(unknown)}")
    grid = req.get("grid", [64, 36])
    if (not isinstance(grid, list) or len(grid) != 2
            or not all(isinstance(g, int) and 2 <= g <= MAX_GRID for g in grid)):
        raise BadRequest("grid must be [cols, rows], 2..256")
    level = req.get("black_level", 16)
    frac = req.get("black_fraction", 0.98)
    if not isinstance(level, int) or not 0 <= level <= 254:
        raise BadRequest("black_level must be 0..254")
    if not isinstance(frac, (int, float)) or not 0.5 <= frac <= 1.0:
        raise BadRequest("black_fraction must be 0.5..1")
    regions = req.get("regions", [])
    if not isinstance(regions, list) or len(regions) > MAX_REGIONS or not all(
            isinstance(r, list) and len(r) == 4 and all(isinstance(v, int) and 0 <= v <= 65535 for v in r)
            and r[2] > 0 and r[3] > 0 for r in regions):
        raise BadRequest(f"regions must be up to {MAX_REGIONS} [x, y, w, h]")
    return {"grid": tuple(grid), "black_level": level, "black_fraction": float(frac),
            "regions": tuple(tuple(r) for r in regions)}


class ScanoutSampler:
    """Samples the first primary plane that drives a CRTC on one card."""

    def __init__(self, card: str) -> None:
        self.card = card
        self.fd = open_card(card)
        self.props = PropertyNames()
        self._samplers: dict[tuple[Any, ...], GridSampler] = {}
        self._primary_ids: list[int] | None = None
        self._trace: tuple[tuple[int, int], float | None] | None = None  # ((fb_id, black_level), trace_lit)

    def close(self) -> None:
        os.close(self.fd)

    def _grid(self, req: dict[str, Any]) -> GridSampler:
        key = (req["grid"], req["black_level"], req["black_fraction"], req["regions"])
        g = self._samplers.get(key)
        if g is None:
            if len(self._samplers) > 8:  # a misbehaving client cycling parameters must not grow memory
                self._samplers.clear()
            g = self._samplers[key] = GridSampler(
                grid_cols=req["grid"][0], grid_rows=req["grid"][1], black_level=req["black_level"],
                black_fraction=req["black_fraction"], regions=[Rect(*r) for r in req["regions"]])
        return g

    def _primaries(self) -> list[Plane]:
        """The primary planes, attached first, each read afresh (the compositor moves them between CRTCs); which
        planes are primary is cached. Found again when a cached id fails (ENOENT: the driver's planes changed)
        or none of them drives a CRTC (after a hotplug, or between compositors: what every request cost before).
        No uevent socket tells of a hotplug: the unit allows AF_UNIX only."""
        if self._primary_ids is not None:
            try:
                planes = primary_planes(self.fd, self.props, self._primary_ids)
            except DrmError:
                planes = []
            if planes and planes[0].crtc_id != 0:
                return planes
        self._primary_ids = None
        ids = primary_plane_ids(self.fd, self.props)
        planes = primary_planes(self.fd, self.props, ids)
        self._primary_ids = ids
        return planes

    def sample(self, req: dict[str, Any]) -> dict[str, Any]:
        planes = self._primaries()
        if not planes:
            return {"v": 1, "ok": False, "reason": "no_plane", "detail": "the card has no primary plane"}
        plane = planes[0]
        out: dict[str, Any] = {"v": 1, "ok": True, "plane": plane.plane_id, "crtc": plane.crtc_id,
                               "fb_id": plane.fb_id}
        if plane.fb_id == 0 or plane.crtc_id == 0:
            # Nothing is scanned out (between a compositor's exit and the console taking over, or all planes
            # off): the panel shows black. A switched-off CRTC is the connector evidence's business.
            out.update(width=0, height=0, format="", modifier=0, grid=0, regions=[0] * len(req["regions"]),
                       region_lit=[0.0] * len(req["regions"]), lit=0.0, black=True, trace_lit=0.0)
            return out
        fb = scanout_fb(self.fd, plane.fb_id)
        name = fourcc(fb.pixel_format)
        if name not in FORMATS:
            gem_close(self.fd, fb.handle)
            return {"v": 1, "ok": False, "reason": "unsupported_format", "detail": name}
        bpp, masks = FORMATS[name]
        layout = Layout("drm", fb.width, fb.height, bpp, fb.pitch, fb.offset, True, masks, fb.height)
        key = (plane.fb_id, req["black_level"])
        with mapped(self.fd, fb) as mm:
            grid = self._grid(req)
            s = grid.sample(mm, layout)
            trace_lit = None
            if s.bright_fraction == 0.0:
                if self._trace is None or self._trace[0] != key:
                    self._trace = (key, grid.trace(mm, layout))
                trace_lit = self._trace[1]
        out.update(width=fb.width, height=fb.height, format=name, modifier=fb.modifier, grid=s.grid,
                   regions=list(s.regions), region_lit=list(s.region_lit), lit=round(s.bright_fraction, 6),
                   black=s.black, trace_lit=trace_lit)
        return out

    def answer(self, data: bytes) -> dict[str, Any]:
        try:
            return self.sample(parse_request(data))
        except BadRequest as e:
            return {"v": 1, "ok": False, "reason": "bad_request", "detail": str(e)}
        except DrmError as e:
            return {"v": 1, "ok": False, "reason": e.reason, "detail": e.detail}  # the client prefixes the reason


def bind(path: str, mode: int) -> socket.socket:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    old = os.umask(0o777 & ~mode)
    try:
        s.bind(path)
    finally:
        os.umask(old)
    os.chmod(path, mode)
    s.listen(MAX_CLIENTS)
    return s


def serve(sampler: ScanoutSampler, listener: socket.socket, stop: list[bool]) -> None:
    clients: list[socket.socket] = []
    while not stop[0]:
        try:
            ready, _, _ = select.select([listener, *clients], [], [], 1.0)
        except InterruptedError:
            continue
        for s in ready:
            if s is listener:
                conn, _ = listener.accept()
                if len(clients) >= MAX_CLIENTS:
                    conn.close()
                    continue
                clients.append(conn)
                continue
            try:
                data = s.recv(MAX_REQUEST + 1)
            except OSError:
                data = b""
            if not data:
                clients.remove(s)
                s.close()
                continue
            try:
                s.send(json.dumps(sampler.answer(data), separators=(",", ":")).encode())
            except OSError:
                clients.remove(s)
                s.close()
    for c in clients:
        c.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="icvq-drm-sampler", description=__doc__.split("\n\n")[0])
    p.add_argument("--card", default="/dev/dri/card0", help="DRM card node (default /dev/dri/card0)")
    p.add_argument("--socket", default="/run/icvq-drm/sampler.sock", help="where the agent connects")
    p.add_argument("--socket-mode", type=lambda v: int(v, 8), default=0o660, help="octal, default 0660")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(name)s: %(message)s")
    try:
        sampler = ScanoutSampler(args.card)
        listener = bind(args.socket, args.socket_mode)
    except (DrmError, OSError) as e:
        log.error("cannot start: %s", e)
        return 1
    stop = [False]

    def on_signal(_sig: int, _frame: object) -> None:
        stop[0] = True
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("sampling %s, serving %s", args.card, args.socket)
    try:
        serve(sampler, listener, stop)
    finally:
        listener.close()
        sampler.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
