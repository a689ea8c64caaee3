"""The HMI heartbeat: a Unix datagram socket the agent binds, where the HMI sends its frame counter.

Protocol (docs/display.md has C and Python senders): one datagram of ASCII,
`<frames>[ anim=0|1][ screen=0|1]`, at least once per second from the HMI's UI thread. `frames` counts frames
the HMI has presented (Qt: QQuickWindow::frameSwapped). `anim=1` (the default) says the screen is meant to be
moving, so a counter that stops is a freeze; a static HMI sends `anim=0`. `screen=0` says the HMI turned the
screen off on purpose (used when screen_expected_on = "heartbeat"). Unknown `key=value` tokens are ignored so
the protocol can grow.
"""

from __future__ import annotations

import os
import socket
import stat

from ...dataclass_shared import dataclass

MAX_DATAGRAM = 256
MAX_PER_CALL = 1024


@dataclass(frozen=True)
class Heartbeat:
    frames: int
    animating: bool
    screen_on: bool | None


def _flag(value: str) -> bool:
    if value not in ("0", "1"):
        raise ValueError(f"flag must be 0 or 1, got {value!r}")
    return value == "1"


def parse_heartbeat(payload: bytes) -> Heartbeat:
    """Raises ValueError on anything that is not a heartbeat."""
    tokens = payload.decode("ascii").split()
    if not tokens:
        raise ValueError("empty heartbeat")
    frames = int(tokens[0], 10)
    if not 0 <= frames < 2**64:
        raise ValueError("frame counter out of range")
    animating, screen_on = True, None
    for tok in tokens[1:]:
        key, sep, value = tok.partition("=")
        if not sep:
            raise ValueError(f"expected key=value, got {tok!r}")
        if key == "anim":
            animating = _flag(value)
        elif key == "screen":
            screen_on = _flag(value)
    return Heartbeat(frames, animating, screen_on)


@dataclass
class HeartbeatState:
    """What the rules need from the heartbeat stream (times are the agent's monotonic seconds)."""

    last_rx: float | None = None
    last_advance: float | None = None
    frames: int | None = None
    animating: bool = True
    screen_on: bool | None = None
    counter_resets: int = 0

    def update(self, hb: Heartbeat, now: float) -> bool:
        """Apply one heartbeat; True when the frame counter moved (a new frame was presented)."""
        moved = self.frames is None or hb.frames != self.frames
        if self.frames is not None and hb.frames < self.frames:
            self.counter_resets += 1  # the HMI restarted; its new counter still proves it draws
        if moved:
            self.last_advance = now
        self.last_rx = now
        self.frames = hb.frames
        self.animating = hb.animating
        if hb.screen_on is not None:
            self.screen_on = hb.screen_on
        return moved


class HeartbeatSocket:
    def __init__(self, path: str, mode: int = 0o660) -> None:
        self.path = path
        self.mode = mode
        self.sock: socket.socket | None = None

    def open(self) -> None:
        self.close()
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)  # left by a previous run that died; nobody else owns this path
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            s.bind(self.path)
            os.chmod(self.path, self.mode)
            s.setblocking(False)
        except OSError:
            s.close()
            raise
        self.sock = s

    def fileno(self) -> int:
        return self.sock.fileno() if self.sock else -1

    def receive(self) -> list[bytes]:
        out: list[bytes] = []
        if not self.sock:
            return out
        for _ in range(MAX_PER_CALL):
            try:
                out.append(self.sock.recv(MAX_DATAGRAM))
            except (BlockingIOError, InterruptedError):
                break
        return out

    def close(self) -> None:
        if self.sock:
            self.sock.close()
            self.sock = None
            try:
                os.unlink(self.path)
            except OSError:
                pass
