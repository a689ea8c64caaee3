"""E2E CRCs and profiles against published vectors, then round trips and corruption detection."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.probes.can.e2e import E2ESpec, check, compile_check, crc8_h2f, crc8_sae_j1850, crc16_ccitt, protect

# AUTOSAR SWS CRC Library check tables (the same inputs for each CRC), plus the CRC catalogue's "123456789".
VECTORS = [
    ("00000000", 0x59, 0x12, 0x84C0),
    ("F20183", 0x37, 0xC2, 0xD374),
    ("0FAA0055", 0x79, 0xC6, 0x2023),
    ("00FF5511", 0xB8, 0x77, 0xB8F9),
    ("332255AABBCCDDEEFF", 0xCB, 0x11, 0xF53F),
    ("926B55", 0x8C, 0x33, 0x0745),
    ("FFFFFFFF", 0x74, 0x6C, 0x1D0F),
    (b"123456789".hex(), 0x4B, 0xDF, 0x29B1),
]


@pytest.mark.parametrize(("data", "j1850", "h2f", "ccitt"), VECTORS)
def test_crcs_match_the_autosar_check_tables(data: str, j1850: int, h2f: int, ccitt: int) -> None:
    d = bytes.fromhex(data)
    assert crc8_sae_j1850(d) == j1850
    assert crc8_h2f(d) == h2f
    assert crc16_ccitt(d) == ccitt


# Protected frames as produced by an independent implementation (the autosar-e2e package's test suite):
# (spec, counter, expected frame). P01 covers 7 payload bytes of an 8-byte frame.
PROFILE_VECTORS = [
    (E2ESpec("P01", 0x123, data_id_mode="both"), 0, "cc00000000000000"),
    (E2ESpec("P01", 0x123, data_id_mode="both"), 1, "9101000000000000"),
    (E2ESpec("P01", 0x123, data_id_mode="alt"), 0, "ce00000000000000"),
    (E2ESpec("P01", 0x123, data_id_mode="alt"), 1, "0201000000000000"),
    (E2ESpec("P01", 0x123, data_id_mode="low"), 0, "ce00000000000000"),
    (E2ESpec("P01", 0x123, data_id_mode="low"), 1, "9301000000000000"),
    (E2ESpec("P01", 0x123, data_id_mode="nibble"), 0, "2a10000000000000"),
    (E2ESpec("P01", 0x123, data_id_mode="nibble"), 1, "7711000000000000"),
    (E2ESpec("P02", data_id_list=(0,) * 16), 1, "4501000000000000"),
    (E2ESpec("P05", 0x1234), 0, "1cca000000000000"),
    (E2ESpec("P05", 0x1234), 1, "cf8d010000000000"),
    (E2ESpec("P05", 0x1234, offset=64), 0, "00000000000000002891000000000000"),
    (E2ESpec("P05", 0x1234, offset=64), 1, "0000000000000000fbd6010000000000"),
]


@pytest.mark.parametrize(("spec", "counter", "frame"), PROFILE_VECTORS)
def test_profiles_match_reference_frames(spec: E2ESpec, counter: int, frame: str) -> None:
    expected = bytes.fromhex(frame)
    assert protect(spec, bytes(len(expected)), counter) == expected
    v = check(spec, expected)
    assert v.ok and v.counter == counter


def test_p02_with_a_data_id_list() -> None:
    spec = E2ESpec("P02", data_id_list=tuple(range(16)))
    frame = bytes.fromhex("bc02020304050607")
    assert check(spec, frame).ok
    assert protect(spec, bytes(range(8)), 2) == frame
    assert not check(spec, bytes.fromhex("bc01020304050607")).ok  # counter 1 selects another data id


@pytest.mark.parametrize(("spec", "bad"), [
    (E2ESpec("P01", 0x123), "cc10000000000000"),  # counter changed, CRC not
    (E2ESpec("P01", 0x123, data_id_mode="nibble"), "7721000000000000"),  # wrong data id nibble
    (E2ESpec("P05", 0x1234), "1cca010000000000"),
    (E2ESpec("P01", 0x124), "cc00000000000000"),  # another data id
])
def test_reference_frames_fail_when_altered(spec: E2ESpec, bad: str) -> None:
    assert not check(spec, bytes.fromhex(bad)).ok


def test_p01_counter_15_is_invalid() -> None:
    spec = E2ESpec("P01", 0x10)
    frame = bytearray(protect(spec, bytes(8), 0))
    frame[1] = 0x0F
    frame[0] = crc8_sae_j1850(bytes((0x10, 0x00)) + bytes(frame[1:]), init=0, xorout=0)
    assert not check(spec, bytes(frame)).ok


SPECS = [E2ESpec("P01", 0x2A7, data_id_mode=m) for m in ("both", "alt", "low", "nibble")] + [
    E2ESpec("P01", 0x2A7, offset=16), E2ESpec("P02", 0x33), E2ESpec("P02", data_id_list=tuple(range(50, 66))),
    E2ESpec("P05", 0xBEEF), E2ESpec("P05", 0xBEEF, offset=24), E2ESpec("P01", 0x2A7, length=6)]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.profile}-{s.data_id_mode}-{s.offset}-{s.length}")
@settings(deadline=None)  # a loaded CI host must not turn a slow example into a failure
@given(payload=st.binary(min_size=8, max_size=8), counter=st.integers(0, 255), bit=st.integers(0, 63))
def test_any_single_bit_flip_is_detected(spec: E2ESpec, payload: bytes, counter: int, bit: int) -> None:
    good = protect(spec, payload, counter % spec.counter_modulo)
    v = check(spec, good)
    assert v.ok and v.counter == counter % spec.counter_modulo
    if spec.length and bit >= spec.length * 8:
        return  # outside the protected part
    bad = bytearray(good)
    bad[bit // 8] ^= 1 << (bit % 8)
    assert not check(spec, bytes(bad)).ok


@pytest.mark.parametrize("spec", [*SPECS, E2ESpec("P02", 0x11, length=7),
                                  E2ESpec("P01", 0x5, data_id_mode="nibble", offset=8)],
                         ids=lambda s: f"{s.profile}-{s.data_id_mode}-{s.offset}-{s.length}")
@settings(deadline=None)
@given(payload=st.binary(min_size=8, max_size=8), counter=st.integers(0, 255), flip=st.integers(-1, 63))
def test_the_compiled_check_agrees_with_the_reference(spec: E2ESpec, payload: bytes, counter: int, flip: int) -> None:
    """The hot path (unrolled, Data ID folded in) and check() give the same verdict on good and bad frames."""
    frame = bytearray(protect(spec, payload, counter % spec.counter_modulo))
    if flip >= 0:
        frame[flip // 8] ^= 1 << (flip % 8)
    ref = check(spec, bytes(frame))
    expected = ref.counter if ref.ok else -1
    assert compile_check(spec, 8)(bytes(frame)) == expected  # the unrolled 8-byte variant where it applies
    assert compile_check(spec, 0)(bytes(frame)) == expected  # the general one
