"""Ground truth from the host: qemu's own `screendump` over QMP (what the emulated display shows, independent of
anything in the guest), and the PPM it writes turned into the XR24 layout the DRM helper samples, so the same grid
code can be run over both.

Guests ask for a dump by creating `req-NAME` in a shared directory; `ScreendumpServer` (a host thread) writes
`NAME.ppm` and then `ack-NAME`. QMP is a line-oriented JSON protocol: a greeting, `qmp_capabilities`, then
commands, each answered by a `return` (events may come in between and are skipped).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

from agent.probes.display.framebuffer import FrameSample, GridSampler, Layout, Rect

XRGB = (0xFF0000, 0x00FF00, 0x0000FF)


class Qmp:
    def __init__(self, path: Path, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.settimeout(timeout_s)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.buf = b""
        self._read()                                  # greeting
        self.command("qmp_capabilities")

    def _read(self) -> dict[str, object]:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("QMP closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return dict(json.loads(line))

    def command(self, name: str, **args: object) -> object:
        self.sock.sendall(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
        while True:
            msg = self._read()
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                raise RuntimeError(f"QMP {name}: {msg['error']}")

    def close(self) -> None:
        self.sock.close()


class ScreendumpServer(threading.Thread):
    def __init__(self, qmp_path: Path, shared: Path) -> None:
        super().__init__(daemon=True, name="screendump")
        self.qmp_path, self.shared = qmp_path, shared
        self.stop = threading.Event()
        self.error: Exception | None = None
        self.done: list[str] = []

    def run(self) -> None:
        qmp: Qmp | None = None
        try:
            while not self.stop.is_set():
                for req in sorted(p for p in self.shared.glob("req-*") if not p.name.endswith(".tmp")):
                    name = req.name[4:]
                    if qmp is None:
                        qmp = Qmp(self.qmp_path)
                    qmp.command("screendump", filename=str(self.shared / f"{name}.ppm"))
                    req.unlink()
                    (self.shared / f"ack-{name}").write_text("")
                    self.done.append(name)
                self.stop.wait(0.02)
        except Exception as e:  # noqa: BLE001 - reported by the test, not lost in a thread
            self.error = e
        finally:
            if qmp is not None:
                qmp.close()


def read_ppm(path: Path) -> tuple[int, int, bytes]:
    data = path.read_bytes()
    # Four header tokens, each followed by one whitespace byte; the pixels may start with "whitespace" bytes.
    fields: list[bytes] = []
    pos = 0
    while len(fields) < 4:
        while data[pos:pos + 1].isspace():
            pos += 1
        end = pos
        while not data[end:end + 1].isspace():
            end += 1
        fields.append(data[pos:end])
        pos = end + 1
    assert fields[0] == b"P6" and fields[3] == b"255", fields
    width, height = int(fields[1]), int(fields[2])
    return width, height, data[pos:pos + width * height * 3]


def as_xr24(width: int, height: int, rgb: bytes) -> bytes:
    """RGB triplets → little-endian XRGB8888 (bytes B, G, R, X), the layout of the guest's scanout."""
    out = bytearray(width * height * 4)
    out[0::4], out[1::4], out[2::4] = rgb[2::3], rgb[1::3], rgb[0::3]
    return bytes(out)


def sample_ppm(path: Path, *, regions: tuple[Rect, ...] = (), grid: tuple[int, int] = (64, 36)) -> FrameSample:
    """The helper's grid sample computed over qemu's screendump instead of the guest's scanout."""
    width, height, rgb = read_ppm(path)
    layout = Layout("drm XR24", width, height, 32, width * 4, 0, True, XRGB, height)
    return GridSampler(grid_cols=grid[0], grid_rows=grid[1], regions=regions).sample(as_xr24(width, height, rgb),
                                                                                     layout)


def colours(path: Path) -> set[tuple[int, int, int]]:
    _, _, rgb = read_ppm(path)
    return {(rgb[i], rgb[i + 1], rgb[i + 2]) for i in range(0, len(rgb) - 2, 3 * 97)}


def lit_pixels(path: Path, black_level: int = 16) -> int:
    """Every pixel of the dump with a channel above black_level (not a sample: the whole screen)."""
    _, _, rgb = read_ppm(path)
    table = bytes(0 if v <= black_level else 1 for v in range(256))
    acc = 0
    for c in range(3):
        acc |= int.from_bytes(rgb[c::3].translate(table), "little")
    return acc.bit_count()
