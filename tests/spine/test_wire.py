"""The wire contract: golden vectors pin the bytes; the strict decoder survives anything."""

from __future__ import annotations

import hashlib
import json
import sys
import zlib
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent import wire
from agent.errors import WireError
from agent.records import Kind, Record

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
DICT1_SHA256_16 = "5a424e04d21dd9ce"
sys.path.insert(0, str(GOLDEN))
import make_vectors  # noqa: E402


@pytest.mark.parametrize("name", sorted(make_vectors.vectors()))
def test_golden_bytes_and_json(name: str) -> None:
    payload = make_vectors.vectors()[name]
    assert payload == (GOLDEN / f"{name}.msgpack").read_bytes(), "encoder output changed: wire format drift"
    expected = json.loads((GOLDEN / f"{name}.json").read_text())
    assert wire.to_json(wire.decode((GOLDEN / f"{name}.msgpack").read_bytes())) == expected


V1_NAMES = sorted(p.stem for p in (GOLDEN / "v1").glob("*.msgpack"))


@pytest.mark.parametrize("name", V1_NAMES)
def test_old_format_v1_batches_still_decode(name: str) -> None:
    """Spools written by older agents resend v1 batches byte-identical; the decoder (and so the backend)
    keeps reading them, and the encoder can still produce them exactly."""
    payload = (GOLDEN / "v1" / f"{name}.msgpack").read_bytes()
    obj = wire.decode(payload)
    assert obj.version == 1
    assert wire.to_json(obj) == json.loads((GOLDEN / "v1" / f"{name}.json").read_text())
    assert make_vectors.vectors(version=1)[name] == payload


def test_v1_and_v2_carry_the_same_records_and_identity() -> None:
    """Dedup keys on the identity, which v2 leaves as it was: the same batch in either version is one batch."""
    for name in V1_NAMES:
        old = wire.to_json(wire.decode((GOLDEN / "v1" / f"{name}.msgpack").read_bytes()))
        new = wire.to_json(wire.decode((GOLDEN / f"{name}.msgpack").read_bytes()))
        assert (old.pop("v"), new.pop("v")) == (1, 2)
        assert old == new


def test_preset_dictionary_is_frozen() -> None:
    """Dictionary 1 is part of the contract: a changed byte would make every stored v2 batch undecodable."""
    d = wire.PRESET_DICTIONARIES[1]
    assert (len(d), hashlib.sha256(d).hexdigest()[:16]) == (1091, DICT1_SHA256_16)


def test_v2_compressed_batch_needs_its_dictionary() -> None:
    live = (GOLDEN / "batch_live.msgpack").read_bytes()
    top = msgpack.unpackb(live)
    assert top["d"] == 1
    with pytest.raises(WireError) as e:
        wire.decode(msgpack.packb({**top, "d": 99}))
    assert e.value.reason == "bad_value"
    with pytest.raises(WireError) as e:
        wire.decode(msgpack.packb({**top, "v": 1}))   # a v1 decoder path has no dictionary
    assert e.value.reason == "zlib"
    b = wire.decode(live)
    assert isinstance(b, wire.Batch) and len(b.records) == 300


def test_golden_json_has_the_documented_fields() -> None:
    doc = json.loads((GOLDEN / "batch_small.json").read_text())
    for key in ("v", "vehicle", "device", "boot", "seq", "records"):
        assert key in doc
    for r in doc["records"]:
        assert {"t", "type", "name"} <= set(r)
    assert doc["records"][2]["episode"] == doc["records"][3]["episode"] == 99
    assert doc["records"][0]["t"] == 1_767_225_600.0


def test_unsynced_batch_times_rebase_on_anchor() -> None:
    b = wire.decode((GOLDEN / "batch_unsynced.msgpack").read_bytes())
    assert isinstance(b, wire.Batch) and not b.synced
    assert b.records[0].wall_ms == 86_400_000 and b.records[0].mono_ms == 20_000


def test_roundtrip_keeps_records() -> None:
    boot = "ab" * 16
    recs = [Record(Kind.METRIC, f"m.{i % 5}", 1_700_000_000_000 + i, 5000 + i, boot, True, i * 1.5)
            for i in range(1000)]
    for mode in ("never", "always", "auto"):
        b = wire.decode(wire.encode_batch(wire.BatchId("V", "d", 1, boot, 3), recs, compress=mode))
        assert isinstance(b, wire.Batch)
        assert [(r.name, r.data, r.wall_ms, r.mono_ms) for r in b.records] == \
            [(r.name, r.data, r.wall_ms, r.mono_ms) for r in recs]


def test_records_of_two_boots_cannot_share_a_batch() -> None:
    a = Record(Kind.METRIC, "x", 1, 1, "aa" * 16, True, 1)
    b = Record(Kind.METRIC, "x", 2, 2, "bb" * 16, True, 1)
    with pytest.raises(ValueError):
        wire.encode_batch(wire.BatchId("V", "d", 1, "aa" * 16, 1), [a, b])


def _batch(**over: object) -> bytes:
    m = {"v": 1, "k": "b", "veh": "V", "dev": "d", "sid": 1, "boot": b"\x01" * 16, "seq": 1, "sync": True,
         "t0": 1000, "m0": 10, "n": ["a"], "r": [[3, 0, 0, 1.0]]}
    m.update(over)
    return msgpack.packb({k: v for k, v in m.items() if v is not ...})


BAD = [
    (b"", "msgpack"),
    (b"\xc1", "msgpack"),
    (msgpack.packb([1, 2]), "not_a_map"),
    (msgpack.packb({"v": 3, "k": "b"}), "version"),
    (msgpack.packb({"v": 2, "k": "b"}), "missing_key"),
    (_batch(k="q"), "unknown_kind"),
    (_batch(veh=...), "missing_key"),
    (_batch(veh="a/b"), "bad_value"),
    (_batch(boot=b"short"), "bad_value"),
    (_batch(seq=-1), "bad_value"),
    (_batch(sync=1), "bad_type"),
    (_batch(r=[]), "empty_batch"),
    (_batch(r=[[9, 0, 0, 1]]), "bad_record"),
    (_batch(r=[[3, 5, 0, 1]]), "bad_record"),
    (_batch(r=[[3, 0, 0, "x"]]), "bad_record"),
    (_batch(r=[[1, 0, 0, []]]), "bad_record"),
    (_batch(r=[[0, 0, 0, [7, 1]]]), "bad_record"),
    (_batch(r=[[0, 0, 0, [0, [[[[[[[[[[[1]]]]]]]]]]]]]]), "too_deep"),
    (_batch(n=[1]), "bad_name"),
    (msgpack.packb({"v": 1, "k": "z", "z": b"not zlib"}), "zlib"),
    (msgpack.packb({"v": 1, "k": "z", "z": zlib.compress(b"\x00" * (5 << 20))}), "too_large"),
    (msgpack.packb({"v": 1, "k": "z", "z": zlib.compress(msgpack.packb({"v": 1, "k": "z", "z": b""}))}),
     "bad_inner"),
    (msgpack.packb({"v": 2, "k": "z", "z": zlib.compress(_batch())}), "missing_key"),
    (msgpack.packb({"v": 2, "k": "z", "d": 1, "z": zlib.compress(_batch())}), "bad_inner"),
    (wire.maybe_compress(_batch(), "always"), "bad_inner"),
    (_batch() + b"\x00", "msgpack"),
    (b"\x00" * (2 << 20), "too_large"),
]


@pytest.mark.parametrize(("payload", "reason"), BAD)
def test_strict_decoder_rejects_with_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(WireError) as e:
        wire.decode(payload)
    assert e.value.reason == reason


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_decoder_never_crashes_on_bytes(data: bytes) -> None:
    try:
        wire.decode(data)
    except WireError:
        pass


_values = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=20)
                       | st.binary(max_size=20),
                       lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
                       max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "k", "veh", "dev", "sid", "boot", "seq", "sync", "t0", "m0", "n",
                                        "r", "z", "t", "f"]), _values, max_size=14))
def test_decoder_never_crashes_on_structured_garbage(m: dict) -> None:
    m.setdefault("v", 2)
    try:
        wire.decode(msgpack.packb(m))
    except WireError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(Kind)), st.text(min_size=1, max_size=30),
                          st.integers(-10**6, 10**6),
                          st.one_of(st.floats(allow_nan=False), st.integers(-2**63, 2**63 - 1),
                                    st.dictionaries(st.text(max_size=10), _values, max_size=5))),
                min_size=1, max_size=50))
def test_encode_decode_roundtrip_property(rows: list) -> None:
    boot = "cd" * 16
    recs, mono = [], 10_000_000
    for kind, name, dm, data in rows:
        mono += dm
        ep = 5 if kind in (Kind.BEGIN, Kind.END) else None
        recs.append(Record(kind, name, 1_700_000_000_000 + mono, mono, boot, True, data, ep))
    out = wire.decode(wire.encode_batch(wire.BatchId("V", "d", 1, boot, 1), recs))
    assert isinstance(out, wire.Batch)
    assert [(r.kind, r.name, r.mono_ms, r.episode) for r in out.records] == \
        [(r.kind, r.name, r.mono_ms, r.episode) for r in recs]
