"""Signals as bit fields of a CAN payload, in DBC numbering, extracted without cantools on the hot path.

A DBC start bit is the LSB for Intel (little-endian) signals and the MSB for Motorola (big-endian) ones, with
bit b living in byte b // 8 at position b % 8. Reading the payload as one integer (little- or big-endian)
turns either kind into a shift and a mask, which is a few hundred nanoseconds instead of cantools' decode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from types import MappingProxyType
from typing import Any

from ...dataclass_shared import dataclass

_MAX_BYTES = 64  # CAN FD payload


@dataclass(frozen=True)
class BitField:
    start: int
    length: int
    little_endian: bool = True
    signed: bool = False
    scale: float = 1.0
    offset: float = 0.0
    choices: Mapping[int, str] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if self.length < 1 or self.start < 0:
            raise ValueError("a bit field needs start >= 0 and length >= 1")
        if self.min_bytes > _MAX_BYTES:
            raise ValueError(f"bit field {self.start}|{self.length} does not fit in {_MAX_BYTES} bytes")

    @property
    def _mask(self) -> int:
        return (1 << self.length) - 1

    def _shift(self, nbytes: int) -> int:
        """Position of the field's LSB in the payload read as one integer."""
        if self.little_endian:
            return self.start
        msb = 8 * (nbytes - 1 - self.start // 8) + self.start % 8
        return msb - (self.length - 1)

    @property
    def min_bytes(self) -> int:
        if self.little_endian:
            return (self.start + self.length - 1) // 8 + 1
        lsb = self._shift(_MAX_BYTES)
        if lsb < 0:
            return _MAX_BYTES + 1
        return _MAX_BYTES - lsb // 8

    def raw(self, data: bytes) -> int:
        """The unsigned raw value; the caller has checked len(data) >= min_bytes."""
        if self.little_endian:
            return (int.from_bytes(data, "little") >> self.start) & self._mask
        return (int.from_bytes(data, "big") >> self._shift(len(data))) & self._mask

    def value(self, data: bytes) -> int | float:
        """The physical value: raw (two's complement when signed) * scale + offset."""
        r = self.raw(data)
        if self.signed and r >> (self.length - 1):
            r -= 1 << self.length
        if self.scale == 1 and self.offset == 0:
            return r
        return r * self.scale + self.offset

    def mask(self, nbytes: int) -> bytes:
        """Payload bytes with the field's bits set (for a BCM content filter)."""
        shift = self._shift(nbytes)
        if shift < 0:
            raise ValueError("payload too short for the field")
        m = self._mask << shift
        return m.to_bytes(nbytes, "little" if self.little_endian else "big")

    def label(self, value: Any) -> str:
        """The DBC value-table name for a raw value, or ''."""
        try:
            return str(self.choices.get(int(value), ""))
        except (TypeError, ValueError):
            return ""


def or_masks(masks: list[bytes], nbytes: int) -> bytes:
    out = 0
    for m in masks:
        out |= int.from_bytes(m, "little")
    return out.to_bytes(nbytes, "little")
