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

Everything decoded is untrusted: every size is bounded and every shape checked; failures raise WireError with a
short reason code that consumers count. Decoding lives in agent/wire_decode.py, imported on first use through
this module's names `decode`, `to_json`, `Batch` and `Status` (the backend and `icvq decode` decode; the agent
only when the broker refused a batch's size), so the idle agent does not hold it (issue 13: idle RSS).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgpack

from . import lazy
from .dataclass_shared import dataclass
from .errors import WireError
from .records import Kind, Record

if TYPE_CHECKING:
    from .wire_decode import Batch as Batch
    from .wire_decode import Status as Status
    from .wire_decode import decode as decode
    from .wire_decode import to_json as to_json

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


# ---------------------------------------------------------------------------------------------- encode
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


_DECODING = frozenset({"Batch", "Status", "decode", "to_json"})


# `wire.decode` and the other decoding names, from agent/wire_decode.py on first use (PEP 562).
__getattr__ = lazy.forward(__name__, "wire_decode", _DECODING)
