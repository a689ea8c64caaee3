"""Decoding the wire contract (agent/wire.py, docs/wire-format.md): strict, bounded, for untrusted payloads.

Imported on first use through agent.wire's names (`wire.decode`, `wire.to_json`, `wire.Batch`, `wire.Status`):
the backend and `icvq decode` decode every message, the agent only a batch whose size the broker refused, so the
idle agent does not hold this code (issue 13: idle RSS). No threads.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import field
from typing import Any

import msgpack

from .dataclass_shared import dataclass
from .errors import WireError
from .records import Kind, Record
from .wire import (
    DEFAULT_LIMITS,
    KIND_BATCH,
    KIND_ZLIB,
    MAX_NAME,
    PRESET_DICTIONARIES,
    STATUS_KINDS,
    VERSION,
    VERSIONS,
    BatchId,
    Limits,
    _check_value,
    _jsonable,
    record_json,
)


@dataclass(frozen=True)
class Batch:
    id: BatchId
    synced: bool
    records: tuple[Record, ...]
    version: int = VERSION


@dataclass(frozen=True)
class Status:
    kind: str
    vehicle: str
    device: str
    boot: str
    t_ms: int
    fields: Mapping[str, Any] = field(default_factory=dict)
    version: int = VERSION


# ---------------------------------------------------------------------------------------------- decode
def _unpack(payload: bytes, lim: Limits) -> Any:
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True,
                               max_str_len=lim.max_payload, max_bin_len=lim.max_inflated,
                               max_array_len=max(lim.max_records, lim.max_names) * 2 + 16,
                               max_map_len=4096, max_ext_len=0)
    except (ValueError, TypeError, msgpack.UnpackException, UnicodeDecodeError, RecursionError) as e:
        raise WireError("msgpack", f"{type(e).__name__}: {e}") from None


def _get(m: Mapping[str, Any], key: str, types: type | tuple[type, ...], what: str = "") -> Any:
    if key not in m:
        raise WireError("missing_key", key)
    v = m[key]
    if isinstance(v, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise WireError("bad_type", f"{key}: {type(v).__name__}")
    if not isinstance(v, types):
        raise WireError("bad_type", f"{key}: {type(v).__name__}{what}")
    return v


def _text(m: Mapping[str, Any], key: str, lim: Limits) -> str:
    v = _get(m, key, str)
    if not v or len(v) > 128 or any(c in v for c in "/+#\0"):
        raise WireError("bad_value", key)
    return v


def _boot(m: Mapping[str, Any]) -> str:
    b = _get(m, "boot", bytes)
    if len(b) != 16:
        raise WireError("bad_value", "boot")
    return b.hex()


def _int(m: Mapping[str, Any], key: str, lo: int = -(2**63), hi: int = 2**64 - 1) -> int:
    v = _get(m, key, int)
    if not lo <= v <= hi:
        raise WireError("bad_value", key)
    return v


def decode(payload: bytes, limits: Limits = DEFAULT_LIMITS) -> Batch | Status:
    """Strictly decode an untrusted payload (batch, compressed batch or status)."""
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise WireError("bad_type", "payload")
    if len(payload) > limits.max_payload:
        raise WireError("too_large", f"{len(payload)} bytes")
    top = _unpack(bytes(payload), limits)
    if not isinstance(top, dict):
        raise WireError("not_a_map")
    version = _get(top, "v", int)
    if version not in VERSIONS:
        raise WireError("version", str(top.get("v")))
    kind = _get(top, "k", str)
    if kind == KIND_ZLIB:
        zdict = b""
        if version >= 2:
            zdict = PRESET_DICTIONARIES.get(_int(top, "d", 0), b"")
            if not zdict:
                raise WireError("bad_value", "d: unknown dictionary")
        inner = _inflate(_get(top, "z", bytes), limits, zdict)
        top = _unpack(inner, limits)
        if not isinstance(top, dict) or top.get("v") != version or top.get("k") != KIND_BATCH:
            raise WireError("bad_inner", "a compressed payload must hold a batch of its own version")
        kind = KIND_BATCH
    if kind == KIND_BATCH:
        return _decode_batch(top, limits, version)
    if kind in STATUS_KINDS:
        f = top.get("f", {})
        if not isinstance(f, dict):
            raise WireError("bad_type", "f")
        _check_value(f, limits)
        return Status(kind, _text(top, "veh", limits), _text(top, "dev", limits), _boot(top),
                      _int(top, "t", 0), f, version)
    raise WireError("unknown_kind", kind[:32])


def _inflate(z: bytes, lim: Limits, zdict: bytes = b"") -> bytes:
    d = zlib.decompressobj(zdict=zdict) if zdict else zlib.decompressobj()
    try:
        out = d.decompress(z, lim.max_inflated)
    except zlib.error as e:
        raise WireError("zlib", str(e)) from None
    if d.unconsumed_tail:
        raise WireError("too_large", "inflated payload")
    if not d.eof:
        raise WireError("zlib", "truncated stream")
    return out


def _decode_batch(top: Mapping[str, Any], lim: Limits, version: int) -> Batch:
    bid = BatchId(_text(top, "veh", lim), _text(top, "dev", lim), _int(top, "sid", 0),
                  _boot(top), _int(top, "seq", 0))
    synced = _get(top, "sync", bool)
    t0 = _int(top, "t0", 0, 2**53)
    m0 = _int(top, "m0", 0, 2**53)
    names = _get(top, "n", list)
    rows = _get(top, "r", list)
    if len(names) > lim.max_names:
        raise WireError("too_large", "names")
    if len(rows) > lim.max_records:
        raise WireError("too_large", "records")
    if not rows:
        raise WireError("empty_batch")
    for n in names:
        if not isinstance(n, str) or len(n) > MAX_NAME:
            raise WireError("bad_name")
    out: list[Record] = []
    prev = m0
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) not in (4, 5):
            raise WireError("bad_record", f"#{i}")
        kind_v, ni, dm, data = row[:4]
        if isinstance(kind_v, bool) or not isinstance(kind_v, int) or kind_v not in Kind._value2member_map_:
            raise WireError("bad_record", f"#{i} kind")
        kind = Kind(kind_v)
        if isinstance(ni, bool) or not isinstance(ni, int) or not 0 <= ni < len(names) or not names[ni]:
            raise WireError("bad_record", f"#{i} name index")
        if isinstance(dm, bool) or not isinstance(dm, int) or abs(dm) > 2**48:
            raise WireError("bad_record", f"#{i} time")
        mono = (m0 if i == 0 else prev) + dm
        prev = mono
        value: Any
        if isinstance(data, (int, float)) and not isinstance(data, bool):
            value = data
        elif isinstance(data, list) and len(data) % 2 == 0:
            value = {}
            for j in range(0, len(data), 2):
                k = data[j]
                if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < len(names):
                    raise WireError("bad_record", f"#{i} field key")
                _check_value(data[j + 1], lim)
                value[names[k]] = data[j + 1]
        else:
            raise WireError("bad_record", f"#{i} data")
        episode = None
        if len(row) == 5:
            episode = row[4]
            if isinstance(episode, bool) or not isinstance(episode, int) or episode < 0:
                raise WireError("bad_record", f"#{i} episode")
        if kind in (Kind.BEGIN, Kind.END) and episode is None:
            raise WireError("bad_record", f"#{i} episode missing")
        out.append(Record(kind, names[ni], t0 + (mono - m0), mono, bid.boot, synced, value, episode))
    return Batch(bid, synced, tuple(out), version)


def to_json(obj: Batch | Status) -> dict[str, Any]:
    """The JSON view `icvq decode` prints."""
    if isinstance(obj, Batch):
        b = obj.id
        return {"v": obj.version, "kind": "batch", "vehicle": b.vehicle, "device": b.device, "sid": b.sid,
                "boot": b.boot, "seq": b.seq, "synced": obj.synced,
                "records": [record_json(r) for r in obj.records]}
    return {"v": obj.version, "kind": obj.kind, "vehicle": obj.vehicle, "device": obj.device, "boot": obj.boot,
            "t": obj.t_ms / 1000, "fields": _jsonable(dict(obj.fields))}
