"""Decoded payloads → plain row tuples, shared by the SQLite and PostgreSQL stores.

Everything here is pure: the stores only decide how rows reach their database. Values that a strictly valid
payload may still carry but a database column cannot hold (integers beyond 64-bit signed, NaN inside JSON)
are caught here, so one odd batch becomes a dead letter instead of a failed transaction.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from agent import wire
from agent.errors import WireError
from agent.records import Kind

INT64_MAX = 2**63 - 1
# Inventory keys that describe the platform, not a versioned software component.
SYSTEM_KEYS = frozenset({"os", "os_version", "kernel", "arch", "python", "hostname", "argv0"})
MAX_COMPONENTS = 64
SWIN_PREFIX = "swin:"

BatchKey = tuple[str, str, int, str, int]


@dataclass(frozen=True)
class Message:
    """One received payload, decoded or not (the consumer hands these to a store)."""

    topic: str
    payload: bytes
    received: float
    obj: wire.Batch | wire.Status | None = None
    reason: str = ""  # why it is a dead letter (obj is None)
    detail: str = ""


@dataclass
class Rows:
    """Rows for one transaction; `batch_keys` gate everything else of a batch (dedup on the identity)."""

    batches: list[tuple[Any, ...]] = field(default_factory=list)
    records: dict[BatchKey, list[tuple[Any, ...]]] = field(default_factory=dict)
    episodes: dict[BatchKey, list[tuple[Any, ...]]] = field(default_factory=dict)
    status: list[tuple[Any, ...]] = field(default_factory=list)
    software: list[tuple[Any, ...]] = field(default_factory=list)
    dead: list[tuple[Any, ...]] = field(default_factory=list)
    # Every copy of each batch in this group: (digest of its payload, topic, payload, received). The first
    # gives the rows; the store's `settle` then tells a resend (same bytes) from a conflict (the same identity
    # with other bytes: a cloned spool, a reflashed unit, a bug).
    copies: dict[BatchKey, list[tuple[str | None, str, bytes, float]]] = field(default_factory=dict)


def digest(payload: bytes) -> str | None:
    """Stored with each batch; None when the payload is unknown (the minimal ingest's add())."""
    return hashlib.sha256(payload).hexdigest()[:32] if payload else None


def settle(rows: Rows, key: BatchKey, stored: str | None, new: bool) -> tuple[int, int]:
    """(duplicates, conflicts) among this group's copies of batch `key`: the reference is the stored copy's
    digest, or this group's first copy if the store had none (`new`). A copy with other bytes becomes a dead
    letter with reason `conflict`; the first copy stays. Unknown digests (None) never conflict."""
    copies = rows.copies.get(key, [])
    ref = copies[0][0] if new else stored
    dups = clashes = 0
    for dig, topic, payload, received in copies[1:] if new else copies:
        if ref is not None and dig is not None and dig != ref:
            rows.dead.append((received, topic[:512], "conflict", f"identity {key} already stored with other "
                              f"bytes (sha256 {ref[:12]}…, this one {dig[:12]}…)", len(payload),
                              bytes(payload[:256])))
            clashes += 1
        else:
            dups += 1
    return dups, clashes


def fleet_of(topic: str) -> str | None:
    parts = topic.split("/")
    return parts[-4] if len(parts) >= 5 else None


def _clean(v: Any) -> Any:
    """JSON-safe copy: bytes → hex, NaN/inf → None (JSON has neither; PostgreSQL jsonb refuses them)."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, int) and not isinstance(v, bool) and not -INT64_MAX - 1 <= v <= INT64_MAX:
        return str(v)
    return v


def dumps(v: Mapping[str, Any]) -> str:
    try:
        return json.dumps(v, separators=(",", ":"), allow_nan=False)
    except (ValueError, TypeError):
        return json.dumps(_clean(v), separators=(",", ":"), allow_nan=False)


def _number(v: int | float) -> float | int | None:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    return v if -INT64_MAX - 1 <= v <= INT64_MAX else float(v)


def check_batch(b: wire.Batch) -> None:
    """What the decoder accepts but a 64-bit signed column cannot hold."""
    if b.id.sid > INT64_MAX or b.id.seq > INT64_MAX:
        raise WireError("out_of_range", "sid/seq beyond 2^63")
    for r in b.records:
        if r.episode is not None and r.episode > INT64_MAX:
            raise WireError("out_of_range", "episode id beyond 2^63")
        if abs(r.mono_ms) > 2**53 or abs(r.wall_ms) > 2**53:
            raise WireError("out_of_range", "time")


def decode(topic: str, payload: bytes, received: float, limits: wire.Limits = wire.DEFAULT_LIMITS,
           resolve: Callable[[str], str] | None = None) -> Message:
    """Strictly decode one untrusted payload; never raises. The payload's identity must match its topic
    (`.../<fleet>/<vehicle>/<device>/batch|status`): that is what makes per-device broker ACLs mean
    something. `resolve` maps vehicle pseudonyms to VINs (pseudonyms.py): topic and payload are compared, and
    the payload stored, in VIN terms."""
    try:
        obj = wire.decode(payload, limits)
        if isinstance(obj, wire.Batch):
            check_batch(obj)
            veh, dev, want = obj.id.vehicle, obj.id.device, "batch"
        else:
            veh, dev, want = obj.vehicle, obj.device, "status"
        parts = topic.split("/")
        r = resolve or (lambda v: v)
        if len(parts) < 5 or parts[-1] != want or r(parts[-3]) != r(veh) or parts[-2] != dev:
            raise WireError("topic_mismatch", topic[:200])
        if r(veh) != veh:
            obj = replace(obj, id=replace(obj.id, vehicle=r(veh))) if isinstance(obj, wire.Batch) else \
                replace(obj, vehicle=r(veh))
        return Message(topic, payload, received, obj)
    except WireError as e:
        return Message(topic, payload, received, None, e.reason, str(e))
    except Exception as e:  # noqa: BLE001 - untrusted input must never take the consumer down
        return Message(topic, payload, received, None, "decoder_error", f"{type(e).__name__}: {e}")


def components(fields: Mapping[str, Any]) -> dict[str, str]:
    """Software components of a birth message: inventory.components (the agent's shape) or, for older
    agents, the string entries of inventory itself; plus the agent's own version."""
    inv = fields.get("inventory")
    out: dict[str, str] = {}
    if isinstance(inv, dict):
        comp = inv.get("components")
        src = comp if isinstance(comp, dict) else {k: v for k, v in inv.items() if k not in SYSTEM_KEYS}
        for k, v in src.items():
            if isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 128 and len(v) <= 128:
                out[k] = v
    agent = fields.get("agent")
    if isinstance(agent, str) and len(agent) <= 128:
        out.setdefault("agent", agent)
    return dict(list(out.items())[:MAX_COMPONENTS])


def swins(fields: Mapping[str, Any]) -> dict[str, str]:
    """Software identification numbers (GB 44496 SWIN) of a birth message's inventory.swin, stored in the
    software table as components named "swin:<component>" so the version-regression test can compare SWINs
    exactly as it compares versions (predict_data.load(by="swin"))."""
    inv = fields.get("inventory")
    sw = inv.get("swin") if isinstance(inv, dict) else None
    if not isinstance(sw, dict):
        return {}
    out = {SWIN_PREFIX + k: v for k, v in sw.items()
           if isinstance(k, str) and isinstance(v, str) and 0 < len(k) <= 120 and 0 < len(v) <= 128}
    return dict(list(out.items())[:MAX_COMPONENTS])


def build(msgs: Iterable[Message]) -> Rows:
    rows = Rows()
    for m in msgs:
        if m.obj is None:
            rows.dead.append((m.received, m.topic[:512], m.reason, m.detail[:500], len(m.payload),
                              bytes(m.payload[:256])))
        elif isinstance(m.obj, wire.Status):
            add_status(rows, m.obj, m.received)
        else:
            add_batch(rows, m.topic, m.obj, m.received, m.payload)
    return rows


def add_status(rows: Rows, s: wire.Status, received: float) -> None:
    fields = dict(s.fields)
    rows.status.append((s.vehicle, s.device, s.kind, s.t_ms / 1000, s.boot, dumps(fields), received))
    if s.kind == wire.KIND_BIRTH:
        for comp, ver in {**components(fields), **swins(fields)}.items():
            rows.software.append((s.vehicle, s.device, s.boot, comp, ver, s.t_ms / 1000))


def add_batch(rows: Rows, topic: str, b: wire.Batch, received: float, payload: bytes = b"") -> None:
    bid = b.id
    key = bid.key()
    dig = digest(payload)
    rows.copies.setdefault(key, []).append((dig, topic, payload, received))
    if key in rows.records:  # the same batch twice in one transaction: the first gives the rows
        return
    recs = b.records
    out: list[tuple[Any, ...]] = []
    eps: list[tuple[Any, ...]] = []
    lo_t = hi_t = recs[0].wall_ms
    lo_m = hi_m = recs[0].mono_ms
    synced = int(b.synced)
    for i, r in enumerate(recs):
        data = r.data
        if isinstance(data, dict):
            value, fields = None, dumps(data)
        else:
            value, fields = _number(data), None
        t, mono = r.wall_ms / 1000, r.mono_ms / 1000
        out.append((bid.vehicle, bid.device, bid.sid, bid.seq, i, t, mono, r.boot, synced, r.kind.label,
                    r.name, value, fields, r.episode))
        lo_t, hi_t = min(lo_t, r.wall_ms), max(hi_t, r.wall_ms)
        lo_m, hi_m = min(lo_m, r.mono_ms), max(hi_m, r.mono_ms)
        if r.kind is Kind.BEGIN or r.kind is Kind.END:
            eps.append(_episode(bid, r.kind, r.name, t, mono, data if isinstance(data, dict) else {},
                                r.episode or 0, fields))
    rows.records[key] = out
    # The batch's time extent: the `boots` view aggregates these (no hot per-boot row that every worker
    # handling a batch of the same drive would have to lock).
    rows.batches.append((bid.vehicle, bid.device, bid.sid, bid.boot, bid.seq, fleet_of(topic), received,
                         len(recs), synced, lo_t / 1000, hi_t / 1000, lo_m / 1000, hi_m / 1000, dig))
    if eps:
        rows.episodes[key] = eps


def _episode(bid: wire.BatchId, kind: Kind, name: str, t: float, mono: float, data: Mapping[str, Any],
             episode: int, fields: str | None) -> tuple[Any, ...]:
    """(vehicle, device, episode, boot, name, is_end, t, mono, duration_s, fields)."""
    dur = data.get("duration_s") if kind is Kind.END else None
    if isinstance(dur, bool) or not isinstance(dur, (int, float)) or not math.isfinite(dur) or dur < 0:
        dur = None
    return (bid.vehicle, bid.device, episode, bid.boot, name, kind is Kind.END, t, mono, dur, fields)


def new_parts(rows: Rows, new_keys: Iterable[BatchKey]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Records and episode rows of the batches that were new in this transaction."""
    recs: list[tuple[Any, ...]] = []
    eps: list[tuple[Any, ...]] = []
    for k in new_keys:
        recs += rows.records[k]
        eps += rows.episodes.get(k, ())
    # Sorted: concurrent workers then take row locks in the same order (no deadlock in PostgreSQL).
    return recs, sorted(eps, key=lambda e: (e[0], e[1], e[2], e[5]))
