"""Raw DRM/KMS ioctls on a card node, from Python: planes, CRTCs, connector properties, and (privileged) the
scanout buffer behind a plane. No threads; every call is one or a few ioctls on the caller's fd.

Hand-written rather than through libdrm because neither the agent nor the helper may pull in a C extension (the
agent runs on stock Python on the car; `python3-drm`-style bindings are not packaged for Buildroot), and the
handful of structs needed is stable kernel ABI (include/uapi/drm/drm.h, drm_mode.h). Numbers are _IOWR('d', nr,
size) and were checked against libdrm 2.4.114 headers and a live bochs/virtio-gpu device
(shared/notes/drm-rig.md). Layouts use explicit little-endian packing: x86_64 and arm64 head units alike.

What needs what: everything here except `scanout_fb` works for any process that can open the card node (no DRM
master, no capability). `scanout_fb` returns buffer handles only to the DRM master or a CAP_SYS_ADMIN process; for
anyone else the kernel reports handle 0, which this module turns into `DrmError("no_handle")`.
"""

from __future__ import annotations

import array
import fcntl
import mmap
import os
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from ...dataclass_shared import dataclass

# _IOWR('d', nr, sizeof(struct)) and _IOW for the two write-only ones.
SET_CLIENT_CAP = 0x4010640D        # struct drm_set_client_cap {u64 capability, value}
DROP_MASTER = 0x0000641F           # _IO('d', 0x1f), no argument
GEM_CLOSE = 0x40086409             # struct drm_gem_close {u32 handle, pad}
MODE_GETRESOURCES = 0xC04064A0     # struct drm_mode_card_res, 64 bytes
MODE_GETCRTC = 0xC06864A1          # struct drm_mode_crtc, 104 bytes
MODE_GETPROPERTY = 0xC04064AA      # struct drm_mode_get_property, 64 bytes
MODE_MAP_DUMB = 0xC01064B3         # struct drm_mode_map_dumb {u32 handle, pad; u64 offset}
MODE_GETPLANERESOURCES = 0xC01064B5
MODE_GETPLANE = 0xC02064B6
MODE_OBJ_GETPROPERTIES = 0xC02064B9
MODE_GETFB2 = 0xC06864CE           # struct drm_mode_fb_cmd2, 104 bytes (modifiers at offset 72)

CLIENT_CAP_UNIVERSAL_PLANES = 2
CLIENT_CAP_ATOMIC = 3
OBJECT_CRTC = 0xCCCCCCCC
OBJECT_CONNECTOR = 0xC0C0C0C0
OBJECT_PLANE = 0xEEEEEEEE
PLANE_TYPE_PRIMARY = 1
DPMS_NAMES = {0: "On", 1: "Standby", 2: "Suspend", 3: "Off"}
MAX_OBJECTS = 256                  # planes, CRTCs, connectors, properties per object: a sanity bound

_CARD_RES = struct.Struct("<4Q8I")
_CRTC = struct.Struct("<Q7I68x")
_CRTC_MODE = struct.Struct("<I5H5H")  # clock, h*, v* (at offset 36 of drm_mode_crtc)
_PLANE_RES = struct.Struct("<QI4x")
_PLANE = struct.Struct("<6IQ")
_OBJ_PROPS = struct.Struct("<QQIII4x")
_PROPERTY = struct.Struct("<QQII32sII")
_FB2 = struct.Struct("<5I4I4I4I4x4Q")
_MAP_DUMB = struct.Struct("<IIQ")
_GEM_CLOSE = struct.Struct("<II")
_CAP = struct.Struct("<QQ")


def fourcc(code: int) -> str:
    return "".join(chr((code >> s) & 0xFF) for s in (0, 8, 16, 24)).strip("\0 ") or "?"


class DrmError(Exception):
    """A DRM call failed. `reason` is a short stable code for counters."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def _ioctl(fd: int, req: int, buf: bytearray, what: str) -> None:
    try:
        fcntl.ioctl(fd, req, buf, True)
    except OSError as e:
        raise DrmError("ioctl_failed", f"{what}: {e.strerror or e}") from None


def _u32_array(n: int) -> array.array[int]:
    return array.array("I", bytes(4 * n))


def _u64_array(n: int) -> array.array[int]:
    return array.array("Q", bytes(8 * n))


def _addr(a: array.array[int]) -> int:
    return a.buffer_info()[0] if len(a) else 0


def open_card(path: str) -> int:
    """Open a card node read-only (the mode-object ioctls and a PROT_READ map need no more, so a device cgroup
    rule `char-drm r` suffices) and ask for universal planes and atomic state."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise DrmError("open_failed", f"{path}: {e.strerror or e}") from None
    # The first process to open a card with no master becomes its master, and then the compositor cannot start
    # (weston exits at once; seen in the VM test when the helper started first). Give it back right away: the
    # kernel lets an fd that became master on open drop it without privilege (Linux 5.8+). EINVAL = not master.
    try:
        fcntl.ioctl(fd, DROP_MASTER, 0)
    except OSError:
        pass
    for cap in (CLIENT_CAP_UNIVERSAL_PLANES, CLIENT_CAP_ATOMIC):
        buf = bytearray(_CAP.pack(cap, 1))
        try:
            fcntl.ioctl(fd, SET_CLIENT_CAP, buf, True)
        except OSError:
            if cap == CLIENT_CAP_UNIVERSAL_PLANES:
                os.close(fd)
                raise DrmError("no_universal_planes", path) from None
            # Without atomic, CRTCs have no ACTIVE property: the legacy mode_valid stands in.
    return fd


@dataclass(frozen=True)
class Plane:
    plane_id: int
    crtc_id: int
    fb_id: int


@dataclass(frozen=True)
class Crtc:
    crtc_id: int
    fb_id: int
    mode_valid: bool
    width: int
    height: int
    active: bool | None          # the atomic ACTIVE property; None without atomic


@dataclass(frozen=True)
class Connector:
    connector_id: int
    crtc_id: int                 # 0: not driven
    dpms: str                    # On, Standby, Suspend, Off, or "" when the property is missing


@dataclass(frozen=True)
class ScanoutFb:
    fb_id: int
    width: int
    height: int
    pixel_format: int
    pitch: int
    offset: int
    modifier: int
    handle: int


def plane_ids(fd: int) -> list[int]:
    buf = bytearray(_PLANE_RES.size)
    _ioctl(fd, MODE_GETPLANERESOURCES, buf, "GETPLANERESOURCES")
    count = min(_PLANE_RES.unpack_from(buf)[1], MAX_OBJECTS)
    ids = _u32_array(count)
    buf = bytearray(_PLANE_RES.pack(_addr(ids), count))
    _ioctl(fd, MODE_GETPLANERESOURCES, buf, "GETPLANERESOURCES")
    return list(ids[:min(count, _PLANE_RES.unpack_from(buf)[1])])


def get_plane(fd: int, plane_id: int) -> Plane:
    buf = bytearray(_PLANE.pack(plane_id, 0, 0, 0, 0, 0, 0))
    _ioctl(fd, MODE_GETPLANE, buf, "GETPLANE")
    _, crtc_id, fb_id, *_rest = _PLANE.unpack_from(buf)
    return Plane(plane_id, crtc_id, fb_id)


class PropertyNames:
    """Property id → name, cached (ids are stable for the device's lifetime)."""

    def __init__(self) -> None:
        self._names: dict[int, str] = {}

    def name(self, fd: int, prop_id: int) -> str:
        n = self._names.get(prop_id)
        if n is None:
            buf = bytearray(_PROPERTY.pack(0, 0, prop_id, 0, b"", 0, 0))
            _ioctl(fd, MODE_GETPROPERTY, buf, "GETPROPERTY")
            n = _PROPERTY.unpack_from(buf)[4].split(b"\0", 1)[0].decode("ascii", "replace")
            self._names[prop_id] = n
        return n

    def values(self, fd: int, obj_id: int, obj_type: int) -> dict[str, int]:
        buf = bytearray(_OBJ_PROPS.pack(0, 0, 0, obj_id, obj_type))
        _ioctl(fd, MODE_OBJ_GETPROPERTIES, buf, "OBJ_GETPROPERTIES")
        count = min(_OBJ_PROPS.unpack_from(buf)[2], MAX_OBJECTS)
        ids, vals = _u32_array(count), _u64_array(count)
        buf = bytearray(_OBJ_PROPS.pack(_addr(ids), _addr(vals), count, obj_id, obj_type))
        _ioctl(fd, MODE_OBJ_GETPROPERTIES, buf, "OBJ_GETPROPERTIES")
        count = min(count, _OBJ_PROPS.unpack_from(buf)[2])
        return {self.name(fd, ids[i]): vals[i] for i in range(count)}


def primary_plane_ids(fd: int, props: PropertyNames) -> list[int]:
    """Ids of the primary planes: GETPLANERESOURCES twice and two OBJ_GETPROPERTIES per plane of the card (cursor
    and overlay planes included), for a set the driver creates when it loads."""
    return [pid for pid in plane_ids(fd) if props.values(fd, pid, OBJECT_PLANE).get("type") == PLANE_TYPE_PRIMARY]


def primary_planes(fd: int, props: PropertyNames, ids: Sequence[int] | None = None) -> list[Plane]:
    """Primary planes, those attached to a CRTC first; one GETPLANE each when the caller has their `ids` already
    (primary_plane_ids)."""
    planes = [get_plane(fd, pid) for pid in (primary_plane_ids(fd, props) if ids is None else ids)]
    return sorted(planes, key=lambda p: (p.crtc_id == 0, p.plane_id))


def resources(fd: int) -> tuple[list[int], list[int]]:
    """(CRTC ids, connector ids)."""
    buf = bytearray(_CARD_RES.size)
    _ioctl(fd, MODE_GETRESOURCES, buf, "GETRESOURCES")
    counts = _CARD_RES.unpack_from(buf)[4:8]
    n_crtc, n_conn = min(counts[1], MAX_OBJECTS), min(counts[2], MAX_OBJECTS)
    crtcs, conns = _u32_array(n_crtc), _u32_array(n_conn)
    # count_fbs and count_encoders stay 0: the kernel copies nothing for them.
    buf = bytearray(_CARD_RES.pack(0, _addr(crtcs), _addr(conns), 0, 0, n_crtc, n_conn, 0, 0, 0, 0, 0))
    _ioctl(fd, MODE_GETRESOURCES, buf, "GETRESOURCES")
    got = _CARD_RES.unpack_from(buf)[4:8]
    return list(crtcs[:min(n_crtc, got[1])]), list(conns[:min(n_conn, got[2])])


def get_crtc(fd: int, crtc_id: int, props: PropertyNames) -> Crtc:
    buf = bytearray(_CRTC.size)
    struct.pack_into("<I", buf, 12, crtc_id)
    _ioctl(fd, MODE_GETCRTC, buf, "GETCRTC")
    _, _, _, fb_id, _x, _y, _gamma, mode_valid = _CRTC.unpack_from(buf)
    mode = _CRTC_MODE.unpack_from(buf, 36)
    active = props.values(fd, crtc_id, OBJECT_CRTC).get("ACTIVE")
    return Crtc(crtc_id, fb_id, bool(mode_valid), mode[1], mode[6], None if active is None else bool(active))


def get_connector(fd: int, connector_id: int, props: PropertyNames) -> Connector:
    """DPMS and the CRTC a connector is bound to, from its properties only: GETCONNECTOR could make a non-master
    kernel before 5.x probe the display (a visible flicker on some panels)."""
    v = props.values(fd, connector_id, OBJECT_CONNECTOR)
    dpms = v.get("DPMS")
    return Connector(connector_id, v.get("CRTC_ID", 0), DPMS_NAMES.get(dpms, str(dpms)) if dpms is not None else "")


def scanout_fb(fd: int, fb_id: int) -> ScanoutFb:
    """GETFB2 of the buffer a plane scans out. The handle must be released with gem_close."""
    buf = bytearray(_FB2.size)
    struct.pack_into("<I", buf, 0, fb_id)
    _ioctl(fd, MODE_GETFB2, buf, "GETFB2")
    f = _FB2.unpack_from(buf)
    width, height, fmt = f[1], f[2], f[3]
    handles, pitches, offsets, modifiers = f[5:9], f[9:13], f[13:17], f[17:21]
    if handles[0] == 0:
        raise DrmError("no_handle", "GETFB2 gave no buffer handle (needs CAP_SYS_ADMIN or DRM master)")
    for h in set(handles[1:]) - {0, handles[0]}:
        gem_close(fd, h)  # multi-planar formats: only plane 0 is sampled
    return ScanoutFb(fb_id, width, height, fmt, pitches[0], offsets[0], modifiers[0], handles[0])


def gem_close(fd: int, handle: int) -> None:
    buf = bytearray(_GEM_CLOSE.pack(handle, 0))
    try:
        fcntl.ioctl(fd, GEM_CLOSE, buf, True)
    except OSError:
        pass  # already gone: nothing leaks


@contextmanager
def mapped(fd: int, fb: ScanoutFb) -> Iterator[mmap.mmap]:
    """The scanout buffer mapped read-only (MAP_DUMB → mmap of the card fd); unmapped and its handle closed on
    exit."""
    try:
        buf = bytearray(_MAP_DUMB.pack(fb.handle, 0, 0))
        _ioctl(fd, MODE_MAP_DUMB, buf, "MAP_DUMB")
        offset = _MAP_DUMB.unpack_from(buf)[2]
        size = fb.offset + fb.pitch * fb.height
        try:
            mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ, offset=offset)
        except (OSError, ValueError) as e:
            raise DrmError("mmap_failed", str(e)) from None
        try:
            yield mm
        finally:
            mm.close()
    finally:
        gem_close(fd, fb.handle)
