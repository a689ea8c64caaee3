"""The wire contract, version 2 (decodes 1 too): one msgpack map per MQTT message. Specified in
docs/wire-format.md.

Batch:  {"v":2, "k":"b", "veh", "dev", "sid", "boot", "seq", "sync", "t0", "m0", "n":[names], "r":[records]}
Record: [kind, name_index, dm, data] or [kind, name_index, dm, data, episode]
  dm    monotonic ms: the first record's relative to m0, each next one relative to the previous record.
  data  a number (a metric value) or a flat list [key_index, value, key_index, value, ...].
Wall time of a record = t0 + (mono - m0): one anchor per batch, so a backend can re-anchor a whole batch
that was stamped before the clock was synchronised ("sync": false) once a synced batch of the same boot
arrives. Compressed: {"v":2, "k":"z", "d":1, "z": zlib(batch)}. Status: {"v":2, "k":"birth"|"death", ...}.

Version 2 changes one thing: a compressed batch names a zlib *preset dictionary* ("d") that is part of this
contract (PRESET_DICTIONARIES, frozen per id). A live 10 s metric batch re-sent its whole name table every
time (42 % of a ~400 B body, issue 13); with the dictionary those names cost back-references of 2-3 bytes,
and every batch still decodes on its own. Dedup is untouched: the identity keys are the same. Version 1
payloads (still in spools written by older agents, resent byte-identical) decode as before.

Everything decoded here is untrusted: every size is bounded and every shape checked; failures raise
WireError with a short reason code that consumers count.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .errors import WireError
from .records import Kind, Record

VERSION = 2
VERSIONS = (1, 2)
CONTENT_TYPE = "application/vnd.icvq.v2+msgpack"
KIND_BATCH = "b"
KIND_ZLIB = "z"
KIND_BIRTH = "birth"
KIND_DEATH = "death"
STATUS_KINDS = (KIND_BIRTH, KIND_DEATH)
MAX_NAME = 256
# v1 only: below this size zlib's own header and the envelope eat the gain (docs/performance.md). With a
# preset dictionary (v2) even a one-event batch shrinks, so v2 only asks for the 10 % saving.
COMPRESS_MIN_BYTES = 256
DICTIONARY_ID = 1


def _preset(strings: Sequence[str]) -> bytes:
    """A zlib preset dictionary: a batch skeleton, then the strings msgpack-packed exactly as a batch's name
    table holds them. zlib finds matches more cheaply near the end, so the most frequent names come last."""
    skeleton = msgpack.packb({"v": 2, "k": "b", "veh": "", "dev": "", "sid": 0, "boot": b"", "seq": 0,
                              "sync": True, "t0": 0, "m0": 0, "n": [], "r": []})
    return skeleton + b"".join(msgpack.packb(x) for x in strings)


# FROZEN: a dictionary id names these exact bytes forever (tests/spine/test_wire.py pins the digest). New
# record names go into a new id; the encoder then uses the newest, decoders keep every old one.
_DICTIONARY_1 = (
    # field keys of events, episodes and health records
    "ended_by", "duration_s", "cause", "signal", "sensor", "evidence", "since_s", "state", "bus", "lost",
    "frames", "reason", "version", "config", "previous_shutdown", "spool_records", "spool_batches", "driver",
    "line", "probe", "errors", "records", "batches", "bytes", "memory_records", "degraded", "connected",
    "reconnects", "published", "intake_overflow", "spool_full.metric", "spool_full.event", "v",
    # event and episode names
    "agent.start", "agent.stop", "agent.log", "display.freeze", "display.black", "display.gpu_hang",
    "display.hmi_unresponsive", "display.backlight_fault", "link.loss", "link.recovery_overdue",
    "can.timeout", "can.sensor", "can.error", "can.error_passive", "can.bus_off", "can.crc", "can.counter",
    "can.bus",
    # periodic metrics and health, most frequent last
    "display.changes_per_min", "display.black_pct", "display.fps_estimate", "link.rssi_dbm", "link.rsrp_dbm",
    "link.rsrq_db", "link.snr_db", "link.nr_rsrp_dbm", "link.nr_rsrq_db", "link.nr_snr_db", "link.rtt_ms",
    "link.registration", "link.connected", "link.iface", "link.gnss", "link.datapath", "agent.drops",
    "agent.probe", "agent.uplink", "agent.spool", "system.temp_c", "sensor", "agent.cpu_pct", "agent.rss_mib",
    "system.disk_used_pct", "system.disk_free_mib", "system.procs", "system.mem_available_mib",
    "system.mem_used_pct", "system.load5", "system.load1", "system.cpu_pct",
)
PRESET_DICTIONARIES: Mapping[int, bytes] = {DICTIONARY_ID: _preset(_DICTIONARY_1)}


@dataclass(frozen=True)
class Limits:
    max_payload: int = 1 << 20
    max_inflated: int = 4 << 20
    max_records: int = 100_000
    max_names: int = 8192
    max_str: int = 4096
    max_depth: int = 8


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class BatchId:
    vehicle: str
    device: str
    sid: int
    boot: str
    seq: int

    def key(self) -> tuple[str, str, int, str, int]:
        return (self.vehicle, self.device, self.sid, self.boot, self.seq)


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


# ---------------------------------------------------------------------------------------------- encode
def check_record(r: Record, limits: Limits | None = None) -> None:
    """Refuse at intake what a strict decoder would refuse later, so one bad record can never block a batch."""
    lim = limits or DEFAULT_LIMITS
    if not 0 < len(r.name) <= MAX_NAME:
        raise WireError("bad_name", r.name[:40])
    if r.kind in (Kind.BEGIN, Kind.END) and r.episode is None:
        raise WireError("bad_record", "episode missing")
    if isinstance(r.data, Mapping):
        for k, v in r.data.items():
            if not isinstance(k, str) or len(k) > MAX_NAME:
                raise WireError("bad_name", str(k)[:40])
            _check_value(v, lim)
    elif isinstance(r.data, bool) or not isinstance(r.data, (int, float)):
        raise WireError("bad_type", type(r.data).__name__)
    elif isinstance(r.data, int) and not -(2**63) <= r.data < 2**64:
        raise WireError("bad_value", "integer out of range")


def _boot_bytes(boot: str) -> bytes:
    try:
        b = bytes.fromhex(boot)
    except ValueError:
        b = b""
    return b if len(b) == 16 else boot.encode()[:16].ljust(16, b"\0")


def encode_batch(bid: BatchId, records: Sequence[Record], *, compress: str = "auto",
                 version: int = VERSION) -> bytes:
    """Encode records of one boot and one sync state into a batch payload (`version` 1 only for tests and
    tools that must talk to a v1-only backend)."""
    if not records:
        raise ValueError("a batch needs at least one record")
    if version not in VERSIONS:
        raise ValueError(f"unknown wire version {version}")
    names: dict[str, int] = {}

    def idx(s: str) -> int:
        i = names.get(s)
        if i is None:
            i = names[s] = len(names)
        return i

    last = records[-1]
    t0, m0 = last.wall_ms, last.mono_ms
    prev = m0
    rows: list[list[Any]] = []
    for i, r in enumerate(records):
        if r.boot != bid.boot or r.synced != last.synced:
            raise ValueError("records of one batch must share boot and sync state")
        if isinstance(r.data, Mapping):
            flat: list[Any] = []
            for k, v in r.data.items():
                flat += (idx(k), v)
            data: Any = flat
        else:
            data = r.data
        dm = r.mono_ms - (m0 if i == 0 else prev)
        prev = r.mono_ms
        row = [int(r.kind), idx(r.name), dm, data]
        if r.episode is not None:
            row.append(r.episode)
        rows.append(row)
    body = msgpack.packb({"v": version, "k": KIND_BATCH, "veh": bid.vehicle, "dev": bid.device,
                          "sid": bid.sid, "boot": _boot_bytes(bid.boot), "seq": bid.seq,
                          "sync": last.synced, "t0": t0, "m0": m0, "n": list(names), "r": rows})
    return maybe_compress(body, compress, version=version)


def maybe_compress(body: bytes, mode: str = "auto", *, version: int = VERSION) -> bytes:
    if mode == "never" or (mode == "auto" and version == 1 and len(body) < COMPRESS_MIN_BYTES):
        return body
    if version == 1:
        z = msgpack.packb({"v": 1, "k": KIND_ZLIB, "z": zlib.compress(body, 6)})
    else:
        c = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, PRESET_DICTIONARIES[DICTIONARY_ID])
        z = msgpack.packb({"v": version, "k": KIND_ZLIB, "d": DICTIONARY_ID, "z": c.compress(body) + c.flush()})
    return z if mode == "always" or len(z) < len(body) * 0.9 else body


def encode_status(kind: str, vehicle: str, device: str, boot: str, t_ms: int,
                  fields: Mapping[str, Any] | None = None, *, version: int = VERSION) -> bytes:
    if kind not in STATUS_KINDS:
        raise ValueError(f"unknown status kind {kind!r}")
    return msgpack.packb({"v": version, "k": kind, "veh": vehicle, "dev": device,
                          "boot": _boot_bytes(boot), "t": t_ms, "f": dict(fields or {})})


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


def _check_value(v: Any, lim: Limits, depth: int = 0) -> None:
    if depth > lim.max_depth:
        raise WireError("too_deep")
    if isinstance(v, list):
        for x in v:
            _check_value(x, lim, depth + 1)
    elif isinstance(v, dict):
        for k, x in v.items():
            if not isinstance(k, str):
                raise WireError("bad_type", "map key")
            _check_value(x, lim, depth + 1)
    elif isinstance(v, str) and len(v) > lim.max_str:
        raise WireError("too_long", "string value")
    elif isinstance(v, int) and not isinstance(v, bool) and not -(2**63) <= v < 2**64:
        raise WireError("bad_value", "integer out of range")
    elif not isinstance(v, (int, float, bool, bytes, str)) and v is not None:
        raise WireError("bad_type", type(v).__name__)


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


# ---------------------------------------------------------------------------------------------- views
def _jsonable(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def record_json(r: Record) -> dict[str, Any]:
    d: dict[str, Any] = {"t": r.wall_ms / 1000, "mono": r.mono_ms / 1000, "type": r.kind.label,
                         "name": r.name}
    if isinstance(r.data, Mapping):
        d["fields"] = _jsonable(dict(r.data))
    else:
        d["value"] = r.data
    if r.episode is not None:
        d["episode"] = r.episode
    return d


def to_json(obj: Batch | Status) -> dict[str, Any]:
    """The JSON view `icvq decode` prints."""
    if isinstance(obj, Batch):
        b = obj.id
        return {"v": obj.version, "kind": "batch", "vehicle": b.vehicle, "device": b.device, "sid": b.sid,
                "boot": b.boot, "seq": b.seq, "synced": obj.synced,
                "records": [record_json(r) for r in obj.records]}
    return {"v": obj.version, "kind": obj.kind, "vehicle": obj.vehicle, "device": obj.device, "boot": obj.boot,
            "t": obj.t_ms / 1000, "fields": _jsonable(dict(obj.fields))}
