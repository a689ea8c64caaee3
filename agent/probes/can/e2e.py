"""AUTOSAR E2E protection for classic CAN payloads: profiles P01, P02 and P05 and the CRCs they use.

Written out here (no C extension) because the agent only needs the check side on a handful of monitored
frames per second, and a pure table-driven CRC keeps the dependency list short on a head unit.

Layouts (AUTOSAR defaults, header at `offset` bits, which must be a whole byte):
- P01: CRC-8 SAE J1850 in the header byte, the counter (0..14) in the low nibble of the next byte; in NIBBLE
  mode the high nibble of that byte carries the Data ID's high nibble. The CRC covers the Data ID (per mode)
  and every byte of the frame except the CRC byte.
- P02: CRC-8H2F (poly 0x2F) in byte 0, counter (0..15) in the low nibble of byte 1; the Data ID is picked from
  a list of 16 by the counter and fed into the CRC after bytes 1..n-1.
- P05: CRC-16-CCITT-FALSE little-endian at the header, an 8-bit counter right after it; the CRC covers the
  bytes before and after the CRC field, then the Data ID low and high byte.
"""

from __future__ import annotations

from collections.abc import Callable

from ...dataclass_shared import dataclass

PROFILES = ("P01", "P02", "P05")
P01_MODES = ("both", "alt", "low", "nibble")


def _table8(poly: int) -> tuple[int, ...]:
    out = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = ((c << 1) ^ poly) & 0xFF if c & 0x80 else (c << 1) & 0xFF
        out.append(c)
    return tuple(out)


def _table16(poly: int) -> tuple[int, ...]:
    out = []
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ poly) & 0xFFFF if c & 0x8000 else (c << 1) & 0xFFFF
        out.append(c)
    return tuple(out)


_J1850 = _table8(0x1D)
_H2F = _table8(0x2F)
_CCITT = _table16(0x1021)


def _run8(table: tuple[int, ...], data: bytes, reg: int) -> int:
    for b in data:
        reg = table[reg ^ b]
    return reg


def _run16(data: bytes, reg: int) -> int:
    t = _CCITT
    for b in data:
        reg = ((reg << 8) & 0xFFFF) ^ t[(reg >> 8) ^ b]
    return reg


def crc8_sae_j1850(data: bytes, init: int = 0xFF, xorout: int = 0xFF) -> int:
    """CRC-8 SAE J1850 (poly 0x1D); defaults as AUTOSAR Crc_CalculateCRC8 on a first call."""
    return _run8(_J1850, data, init) ^ xorout


def crc8_h2f(data: bytes, init: int = 0xFF, xorout: int = 0xFF) -> int:
    """CRC-8H2F (poly 0x2F); defaults as AUTOSAR Crc_CalculateCRC8H2F on a first call."""
    return _run8(_H2F, data, init) ^ xorout


def crc16_ccitt(data: bytes, init: int = 0xFFFF) -> int:
    """CRC-16-CCITT-FALSE (poly 0x1021, no final XOR), as AUTOSAR Crc_CalculateCRC16."""
    return _run16(data, init)


@dataclass(frozen=True)
class E2ESpec:
    profile: str
    data_id: int = 0
    data_id_list: tuple[int, ...] = ()  # P02: 16 ids indexed by the counter; empty = data_id for all
    data_id_mode: str = "both"  # P01 only
    offset: int = 0  # header position in bits (a multiple of 8)
    length: int = 0  # bytes covered; 0 = the whole frame

    @property
    def counter_modulo(self) -> int:
        return {"P01": 15, "P02": 16, "P05": 256}[self.profile]

    @property
    def header_bytes(self) -> int:
        """Bytes the frame needs at least to carry the header."""
        return self.offset // 8 + (3 if self.profile == "P05" else 2)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    counter: int
    received: int  # the CRC in the frame
    computed: int  # the CRC the data should have had


def _p01_crc(spec: E2ESpec, data: bytes, counter: int) -> int:
    pos = spec.offset // 8
    lo, hi = spec.data_id & 0xFF, (spec.data_id >> 8) & 0xFF
    # AUTOSAR chains Crc_CalculateCRC8 calls starting from 0xFF with IsFirstCall=FALSE and XORs the result
    # with 0xFF again: the net effect is a plain register starting at 0x00 with no final XOR.
    if spec.data_id_mode == "both":
        pre = bytes((lo, hi))
    elif spec.data_id_mode == "low":
        pre = bytes((lo,))
    elif spec.data_id_mode == "alt":
        pre = bytes((lo if counter % 2 == 0 else hi,))
    else:  # nibble: the high nibble travels in the frame, the CRC sees a zero high byte
        pre = bytes((lo, 0))
    return _run8(_J1850, pre + data[:pos] + data[pos + 1:], 0x00)


def _p02_crc(spec: E2ESpec, data: bytes, counter: int) -> int:
    did = spec.data_id_list[counter] if spec.data_id_list else spec.data_id & 0xFF
    return _run8(_H2F, data[1:] + bytes((did,)), 0xFF) ^ 0xFF


def _p05_crc(spec: E2ESpec, data: bytes) -> int:
    pos = spec.offset // 8
    did = bytes((spec.data_id & 0xFF, (spec.data_id >> 8) & 0xFF))
    return _run16(data[:pos] + data[pos + 2:] + did, 0xFFFF)


def _covered(spec: E2ESpec, data: bytes) -> bytes:
    return bytes(data[:spec.length]) if spec.length else bytes(data)


def check(spec: E2ESpec, data: bytes) -> Verdict:
    """Verify one frame; the caller has made sure the frame is at least `header_bytes` long."""
    d = _covered(spec, data)
    pos = spec.offset // 8
    if spec.profile == "P01":
        counter = d[pos + 1] & 0x0F
        calc = _p01_crc(spec, d, counter)
        ok = calc == d[pos] and counter <= 14
        if spec.data_id_mode == "nibble":
            ok = ok and (d[pos + 1] >> 4) == (spec.data_id >> 8) & 0x0F
        return Verdict(ok, counter, d[pos], calc)
    if spec.profile == "P02":
        counter = d[1] & 0x0F
        calc = _p02_crc(spec, d, counter)
        return Verdict(calc == d[0], counter, d[0], calc)
    counter = d[pos + 2]
    calc = _p05_crc(spec, d)
    rx = d[pos] | d[pos + 1] << 8
    return Verdict(calc == rx, counter, rx, calc)


def protect(spec: E2ESpec, data: bytes, counter: int) -> bytes:
    """Write counter and CRC into `data` (the sender's side: for simulators, tests and the benchmark)."""
    d = bytearray(data)
    pos = spec.offset // 8
    if spec.profile == "P01":
        nib = ((spec.data_id >> 8) & 0x0F) << 4 if spec.data_id_mode == "nibble" else d[pos + 1] & 0xF0
        d[pos + 1] = nib | (counter % 15)
        d[pos] = _p01_crc(spec, _covered(spec, bytes(d)), counter % 15)
    elif spec.profile == "P02":
        d[1] = (d[1] & 0xF0) | (counter & 0x0F)
        d[0] = _p02_crc(spec, _covered(spec, bytes(d)), counter & 0x0F)
    else:
        d[pos + 2] = counter & 0xFF
        crc = _p05_crc(spec, _covered(spec, bytes(d)))
        d[pos], d[pos + 1] = crc & 0xFF, crc >> 8
    return bytes(d)


def compile_check(spec: E2ESpec, frame_length: int) -> Callable[[bytes], int]:
    """The hot-path check for frames of `frame_length` bytes (0 = not fixed): returns the counter, or -1
    when the frame fails. The Data ID part of the CRC is folded into a precomputed start register, and fixed
    8-byte frames with the header at byte 0 (the common classic-CAN layout) get an unrolled CRC without a
    Python loop: about 3x cheaper than check(), which stays the reference and explains failures."""
    n = spec.length or None  # bytes covered; None = the whole frame
    fixed8 = frame_length == 8 and not spec.length
    pos = spec.offset // 8
    lo, hi = spec.data_id & 0xFF, (spec.data_id >> 8) & 0xFF
    if spec.profile == "P01":
        T = _J1850
        pre = {"both": (bytes((lo, hi)),) * 2, "low": (bytes((lo,)),) * 2, "alt": (bytes((lo,)), bytes((hi,))),
               "nibble": (bytes((lo, 0)),) * 2}[spec.data_id_mode]
        regs = (_run8(T, pre[0], 0), _run8(T, pre[1], 0))
        nibble = (spec.data_id >> 8) & 0x0F if spec.data_id_mode == "nibble" else -1
        if fixed8 and pos == 0:
            def p01_8(d: bytes) -> int:
                crc, h, a, b, c, e, f, g = d
                ctr = h & 0x0F
                if T[T[T[T[T[T[T[regs[ctr & 1] ^ h] ^ a] ^ b] ^ c] ^ e] ^ f] ^ g] != crc or ctr > 14:
                    return -1
                return ctr if nibble < 0 or h >> 4 == nibble else -1
            return p01_8

        def p01(d: bytes) -> int:
            d = d[:n]
            ctr = d[pos + 1] & 0x0F
            reg = regs[ctr & 1]
            for x in d[:pos]:
                reg = T[reg ^ x]
            for x in d[pos + 1:]:
                reg = T[reg ^ x]
            if reg != d[pos] or ctr > 14 or (nibble >= 0 and d[pos + 1] >> 4 != nibble):
                return -1
            return ctr
        return p01
    if spec.profile == "P02":
        H = _H2F
        ids = spec.data_id_list or (lo,) * 16
        if fixed8:
            def p02_8(d: bytes) -> int:
                crc, h, a, b, c, e, f, g = d
                ctr = h & 0x0F
                return ctr if H[H[H[H[H[H[H[H[0xFF ^ h] ^ a] ^ b] ^ c] ^ e] ^ f] ^ g] ^ ids[ctr]] ^ 0xFF == crc else -1
            return p02_8

        def p02(d: bytes) -> int:
            d = d[:n]
            ctr = d[1] & 0x0F
            reg = 0xFF
            for x in d[1:]:
                reg = H[reg ^ x]
            return ctr if H[reg ^ ids[ctr]] ^ 0xFF == d[0] else -1
        return p02
    tail = bytes((lo, hi))

    def p05(d: bytes) -> int:
        d = d[:n]
        rx = d[pos] | d[pos + 1] << 8
        return d[pos + 2] if _run16(d[:pos] + d[pos + 2:] + tail, 0xFFFF) == rx else -1
    return p05
