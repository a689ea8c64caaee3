"""The agent's side of the DRM/KMS source, with no privilege beyond opening the card node:

- `KmsWatch`: the primary plane's `fb_id` (a change is a page flip: the compositor presented a new buffer), and the
  CRTC/connector state (ACTIVE, mode, DPMS, binding) for the black-screen rules;
- `ScanoutClient`: asks the privileged helper (`icvq-drm-sampler`, scanout_helper.py) for one grid sample of the
  scanout and hands it to FrameTracker exactly like FrameReader does for fbdev and XWD.

Flips are polled, not awaited: page-flip events go only to the DRM master that asked for them. Virtual devices
have no vblank, so flip *rates* mean nothing there (85 to 130 per second in qemu); the rules only use *whether* a flip
happened since a moment. Polling every `drm_flip_poll_s` (0.1 s) can miss a change when a double-buffered client
flips an even number of times between two polls, but not for long: 5 polls in a row miss a steady animation with
probability ≈ 2⁻⁵. The `fb_id` alone never says the screen changed (the console draws into one buffer without
flipping, a compositor may flip identical frames): it is used only together with the sampled content.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import field

from ...dataclass_shared import dataclass
from .drm import DrmError, PropertyNames, get_connector, get_crtc, get_plane, open_card, primary_planes, resources
from .framebuffer import FrameSample, FrameUnavailable, Layout, Rect
from .rules import ConnectorSignal

MAX_RESPONSE = 65536


@dataclass
class KmsWatch:
    card: str
    fd: int | None = None
    plane_id: int = 0
    fb_id: int | None = None
    flip_at: float | None = None       # when fb_id was last seen to change (first poll counts as a change)
    flips: int = 0                     # fb_id changes seen in the current metrics window
    props: PropertyNames = field(default_factory=PropertyNames)

    def open(self) -> None:
        self.close()
        try:
            self.fd = open_card(self.card)
            self._find_plane()
        except DrmError as e:
            self.close()
            raise OSError(str(e)) from None

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
        self.fd, self.plane_id, self.fb_id = None, 0, None

    def _find_plane(self) -> None:
        assert self.fd is not None
        planes = primary_planes(self.fd, self.props)
        if not planes:
            raise DrmError("no_plane", f"{self.card} has no primary plane")
        self.plane_id = planes[0].plane_id

    def poll_flip(self, now: float) -> bool:
        """Read the plane's fb_id; True when it changed (a flip, or a switch to another buffer owner)."""
        if self.fd is None:
            raise OSError("card not open")
        try:
            p = get_plane(self.fd, self.plane_id)
            if p.crtc_id == 0:  # the plane went off its CRTC (compositor restart): follow the active one
                self._find_plane()
                p = get_plane(self.fd, self.plane_id)
        except DrmError as e:
            raise OSError(str(e)) from None
        changed = p.fb_id != self.fb_id
        if changed:
            if self.fb_id is not None:
                self.flips += 1
            self.fb_id, self.flip_at = p.fb_id, now
        return changed

    def connectors(self, now: float, since: dict[str, tuple[bool, float]]) -> tuple[ConnectorSignal, ...]:
        """Each connector bound to a CRTC is driven when its CRTC is active with a mode and its DPMS is On;
        `since` carries (ok, first seen) per connector between calls."""
        if self.fd is None:
            raise OSError("card not open")
        out = []
        try:
            crtc_ids, conn_ids = resources(self.fd)
            crtcs = {c: get_crtc(self.fd, c, self.props) for c in crtc_ids}
            for cid in conn_ids:
                conn = get_connector(self.fd, cid, self.props)
                if conn.crtc_id == 0:
                    continue  # not part of the current configuration (an unplugged output)
                crtc = crtcs.get(conn.crtc_id)
                active = crtc is not None and crtc.mode_valid and crtc.active is not False
                ok = active and conn.dpms in ("On", "")
                name = f"drm:{os.path.basename(self.card)}:{cid}"
                prev = since.get(name)
                if prev is None or prev[0] != ok:
                    prev = since[name] = (ok, now)
                out.append(ConnectorSignal(name, ok, prev[1], {
                    "connector": name, "crtc": conn.crtc_id, "active": active, "dpms": conn.dpms,
                    "mode": f"{crtc.width}x{crtc.height}" if crtc and crtc.mode_valid else ""}))
        except DrmError as e:
            raise OSError(str(e)) from None
        return tuple(out)


class ScanoutClient:
    """A FrameReader look-alike (sample(), opens, layout, close()) backed by the helper's socket."""

    def __init__(self, path: str, *, grid_cols: int = 64, grid_rows: int = 36, black_level: int = 16,
                 black_fraction: float = 0.98, regions: tuple[Rect, ...] = (), timeout_s: float = 2.0) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self.regions = regions
        self.request = json.dumps({"v": 1, "grid": [grid_cols, grid_rows], "black_level": black_level,
                                   "black_fraction": black_fraction,
                                   "regions": [[r.x, r.y, r.width, r.height] for r in regions]}).encode()
        self.layout: Layout | None = None
        self.opens = 0
        self.fb_id: int | None = None
        self._sock: socket.socket | None = None

    def close(self) -> None:
        self._disconnect()
        self.layout = None

    def _disconnect(self) -> None:
        """Drop the connection but keep the layout: a helper that restarts shows the same picture, and only a new
        geometry or format (below) makes it a new one (FrameTracker keeps the episode's history across it)."""
        if self._sock is not None:
            self._sock.close()
        self._sock = None

    def _connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        s.settimeout(self.timeout_s)
        try:
            s.connect(self.path)
        except FileNotFoundError:
            s.close()
            raise FrameUnavailable("missing", f"no sampler socket at {self.path}") from None
        except OSError as e:
            s.close()
            raise FrameUnavailable("unreadable", f"sampler {self.path}: {e.strerror or e}") from None
        return s

    def sample(self) -> FrameSample:
        if self._sock is None:
            self._sock = self._connect()
        try:
            self._sock.send(self.request)
            data = self._sock.recv(MAX_RESPONSE)
        except OSError as e:
            self._disconnect()
            raise FrameUnavailable("unreadable", f"sampler {self.path}: {e.strerror or e}") from None
        if not data:
            self._disconnect()
            raise FrameUnavailable("unreadable", "sampler closed the connection")
        try:
            r = json.loads(data)
            if not r.get("ok"):
                raise FrameUnavailable(str(r.get("reason", "malformed")), str(r.get("detail", "")))
            width, height, fmt = int(r["width"]), int(r["height"]), str(r["format"])
            regions = tuple(None if c is None else int(c) for c in r["regions"])
            region_lit = tuple(None if v is None else float(v) for v in r["region_lit"])
            trace = r.get("trace_lit")  # absent from a helper older than the trace: not looked at
            sample = FrameSample(int(r["grid"]), regions, float(r["lit"]), bool(r["black"]), region_lit,
                                 None if trace is None else float(trace))
            self.fb_id = int(r["fb_id"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise FrameUnavailable("malformed", f"sampler answer {data[:120]!r}") from None
        if len(regions) != len(self.regions) or len(region_lit) != len(self.regions):
            raise FrameUnavailable("malformed", "sampler answered for other regions")
        if width == 0 and self.layout is not None:
            return sample  # nothing scanned out for a moment (black): not a new picture, keep the history
        # A new geometry or format is a new picture (console ↔ compositor, mode change): history restarts.
        layout = Layout(f"drm {fmt}", width, height, 32 if fmt != "RG16" else 16, 0, 0, True, (0, 0, 0), height)
        if self.layout is None or (self.layout.width, self.layout.height, self.layout.kind) != \
                (width, height, layout.kind):
            self.opens += 1
        self.layout = layout
        return sample
