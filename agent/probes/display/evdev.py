"""Reading evdev input devices (/dev/input/eventN, or a FIFO carrying the same structs in tests).

`struct input_event` is a `struct timeval` (two C longs) then u16 type, u16 code, s32 value: 24 bytes on
64-bit platforms, 16 on 32-bit ones. The native struct format gives this platform's size.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable

from ...dataclass_shared import dataclass
from .streams import Stream, open_stream

INPUT_EVENT = struct.Struct("@llHHi")
EV_SYN = 0x00
EV_KEY = 0x01
BTN_TOUCH = 0x14A
KEY_PRESS = 1
MAX_READ = INPUT_EVENT.size * 256


@dataclass(frozen=True)
class InputEvent:
    sec: int
    usec: int
    type: int
    code: int
    value: int


def pack_event(type_: int, code: int, value: int, sec: int = 0, usec: int = 0) -> bytes:
    """For tests and simulators: one event in this platform's layout."""
    return INPUT_EVENT.pack(sec, usec, type_, code, value)


def is_press(ev: InputEvent, codes: Iterable[int] = ()) -> bool:
    """A touch down (EV_KEY BTN_TOUCH 1) or a key press; `codes` narrows it to some EV_KEY codes."""
    if ev.type != EV_KEY or ev.value != KEY_PRESS:
        return False
    allowed = tuple(codes)
    return not allowed or ev.code in allowed


class EvdevReader:
    def __init__(self, path: str, read: Callable[[int, int], bytes] = os.read) -> None:
        self.path = path
        self._read = read
        self.stream: Stream | None = None
        self._buf = b""

    def open(self) -> None:
        self.close()
        self.stream = open_stream(self.path)
        self._buf = b""

    def close(self) -> None:
        if self.stream:
            self.stream.close()
            self.stream = None

    def fileno(self) -> int:
        return self.stream.fd if self.stream else -1

    def read(self) -> list[InputEvent]:
        """Every whole event available now. Raises OSError when the device went away (ENODEV)."""
        if not self.stream:
            return []
        while True:
            try:
                chunk = self._read(self.stream.fd, MAX_READ)
            except (BlockingIOError, InterruptedError):
                break
            if not chunk:
                break
            self._buf += chunk
            if len(chunk) < MAX_READ:
                break
        # A device returns whole events; a FIFO may split one, so the tail waits for the next read.
        n = len(self._buf) // INPUT_EVENT.size * INPUT_EVENT.size
        data, self._buf = self._buf[:n], self._buf[n:]
        return [InputEvent(*t) for t in INPUT_EVENT.iter_unpack(data)]
