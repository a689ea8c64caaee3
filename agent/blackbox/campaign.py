"""Collection campaigns: the document the backend publishes, its schema, and who it targets (pure).

A campaign only chooses among data the agent already collects: a trigger (record family or name, record
kinds, field conditions), which ring channels to capture, pre/post seconds, rate limits, a validity window
and a target. There is no field that could carry a command, a file path or a CAN frame: unknown keys are
refused, like unknown config keys. Every refusal names the key path, and a document is either applied whole
or not at all. The format is specified in docs/wire-format.md ("Campaigns"). A trigger's field `Condition`
lives here, not in triggers.py: only a campaign makes one (issue 13: ~15 KiB an idle car does not hold).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from ..dataclass_shared import dataclass
from ..records import Kind
from .campaign_types import CampaignError, Identity
from .settings import CHANNELS
from .triggers import Trigger

# A trigger field condition's operators (docs/wire-format.md); a condition comes only with a campaign.
OPS = ("eq", "ne", "lt", "le", "gt", "ge", "in", "contains")


@dataclass(frozen=True)
class Condition:
    field: str
    op: str
    value: Any

    def holds(self, fields: Mapping[str, Any]) -> bool:
        if self.field not in fields:
            return False
        v = fields[self.field]
        want = self.value
        if self.op == "eq":
            return bool(v == want)
        if self.op == "ne":
            return bool(v != want)
        if self.op == "in":
            return v in want
        if self.op == "contains":
            # `5 in "text"` raises: a backend's condition must never break the observer (and with it every
            # other trigger of the batch), so a number is only looked for in a list.
            if isinstance(v, str):
                return isinstance(want, str) and want in v
            return isinstance(v, list) and want in v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
            return False
        return bool({"lt": v < want, "le": v <= want, "gt": v > want, "ge": v >= want}[self.op])


MAX_DOC_BYTES = 16 * 1024
MAX_LIST = 1000
MAX_CONDITIONS = 8
MAX_SPAN_S = 366 * 86400
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# The device topics' last levels. `<fleet>/<vehicle>/_campaigns/<id>` has the shape of a device topic with device
# "_campaigns", so the broker ACL's vehicle patterns (docs/security.md) let the vehicle's own key write these
# three ids: refused, a vehicle cannot start a campaign for itself.
RESERVED_IDS = ("batch", "status", "campaign")
NAME_RE = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")
KINDS = {"begin": Kind.BEGIN, "event": Kind.EVENT, "end": Kind.END}
TOP_KEYS = {"id", "revision", "description", "trigger", "capture", "pre_s", "post_s", "min_interval_s",
            "max_snapshots", "start", "end", "target"}
TRIGGER_KEYS = {"family", "name", "kinds", "where"}
WHERE_KEYS = {"field", "op", "value"}
TARGET_KEYS = {"fleets", "vehicles", "devices", "software"}


@dataclass(frozen=True)
class Campaign:
    id: str
    revision: int
    doc: Mapping[str, Any]          # the validated document, persisted as is
    trigger: Trigger
    start: float | None             # wall-clock seconds
    end: float

    def state(self, now_wall: float) -> str:
        if now_wall >= self.end:
            return "ended"
        if self.start is not None and now_wall < self.start:
            return "scheduled"
        return "active"


def _t(v: Any, key: str) -> float:
    if isinstance(v, bool):
        raise CampaignError(key, "expected an ISO 8601 date with time zone or epoch seconds")
    if isinstance(v, (int, float)):
        if not math.isfinite(v) or not 0 <= v < 2**33:
            raise CampaignError(key, "epoch seconds out of range")
        return float(v)
    if isinstance(v, str) and len(v) <= 40:
        try:
            d = datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise CampaignError(key, f"not an ISO 8601 date: {v!r}") from None
        if d.tzinfo is None:
            raise CampaignError(key, "the date needs a time zone (e.g. 2026-12-24T00:00:00Z)")
        return d.timestamp()
    raise CampaignError(key, "expected an ISO 8601 date with time zone or epoch seconds")


def _num(doc: Mapping[str, Any], key: str, default: float, lo: float, hi: float, integer: bool = False) -> float:
    v = doc.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise CampaignError(key, f"expected {'an integer' if integer else 'a number'}, got {type(v).__name__}")
    if not math.isfinite(v) or not lo <= v <= hi:
        raise CampaignError(key, f"must be within {lo:g}..{hi:g}, got {v!r}")
    return v


def _strings(v: Any, key: str, pattern: re.Pattern[str] | None = None, max_len: int = 128) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise CampaignError(key, f"expected an array of strings, got {type(v).__name__}")
    if len(v) > MAX_LIST:
        raise CampaignError(key, f"at most {MAX_LIST} entries, got {len(v)}")
    for i, s in enumerate(v):
        if not isinstance(s, str) or not 0 < len(s) <= max_len or (pattern and not pattern.match(s)):
            raise CampaignError(f"{key}[{i}]", f"expected a name of at most {max_len} characters, got {s!r:.60}")
    return tuple(v)


def _unknown(doc: Mapping[str, Any], known: set[str], path: str) -> None:
    for k in doc:
        if k not in known:
            raise CampaignError(f"{path}{k}", f"unknown key (known: {', '.join(sorted(known))})")


def _table(doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    v = doc.get(key, {})
    if not isinstance(v, dict):
        raise CampaignError(key, f"expected an object, got {type(v).__name__}")
    return v


def _scalar(v: Any, key: str) -> Any:
    if v is None or isinstance(v, (bool, int, str)) or (isinstance(v, float) and math.isfinite(v)):
        if isinstance(v, str) and len(v) > 256:
            raise CampaignError(key, "string longer than 256 characters")
        return v
    raise CampaignError(key, f"expected a number, string, boolean or null, got {type(v).__name__}")


def _conditions(v: Any) -> tuple[Condition, ...]:
    if not isinstance(v, list):
        raise CampaignError("trigger.where", f"expected an array, got {type(v).__name__}")
    if len(v) > MAX_CONDITIONS:
        raise CampaignError("trigger.where", f"at most {MAX_CONDITIONS} conditions, got {len(v)}")
    out = []
    for i, c in enumerate(v):
        key = f"trigger.where[{i}]"
        if not isinstance(c, dict):
            raise CampaignError(key, "expected an object {field, op, value}")
        _unknown(c, WHERE_KEYS, f"{key}.")
        f, op = c.get("field"), c.get("op", "eq")
        if not isinstance(f, str) or not 0 < len(f) <= 128:
            raise CampaignError(f"{key}.field", "expected a field name")
        if op not in OPS:
            raise CampaignError(f"{key}.op", f"must be one of {', '.join(OPS)}, got {op!r:.40}")
        if "value" not in c:
            raise CampaignError(f"{key}.value", "required")
        value = c["value"]
        if op == "in":
            if not isinstance(value, list) or len(value) > MAX_LIST:
                raise CampaignError(f"{key}.value", f"'in' takes an array of at most {MAX_LIST} values")
            value = tuple(_scalar(x, f"{key}.value[{j}]") for j, x in enumerate(value))
        else:
            value = _scalar(value, f"{key}.value")
            if op in ("lt", "le", "gt", "ge") and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise CampaignError(f"{key}.value", f"'{op}' compares numbers")
        out.append(Condition(f, op, value))
    return tuple(out)


def parse(payload: bytes, *, window_s: float, now_wall: float) -> Campaign:
    """Validate one campaign document (JSON, UTF-8). Raises CampaignError naming the key path."""
    if len(payload) > MAX_DOC_BYTES:
        raise CampaignError("", f"document of {len(payload)} bytes exceeds {MAX_DOC_BYTES}")
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CampaignError("", f"not JSON: {str(e)[:80]}") from None
    return validate(doc, window_s=window_s, now_wall=now_wall)


def validate(doc: Any, *, window_s: float, now_wall: float) -> Campaign:
    if not isinstance(doc, dict):
        raise CampaignError("", "a campaign is a JSON object")
    _unknown(doc, TOP_KEYS, "")
    cid = doc.get("id")
    if not isinstance(cid, str) or not ID_RE.match(cid) or cid in RESERVED_IDS:
        raise CampaignError("id", "required: 1-64 of A-Z a-z 0-9 . _ - (not 'batch', 'status' or 'campaign')")
    revision = int(_num(doc, "revision", 0, 0, 2**31, integer=True))
    desc = doc.get("description", "")
    if not isinstance(desc, str) or len(desc) > 500:
        raise CampaignError("description", "expected a string of at most 500 characters")
    trig = doc.get("trigger")
    if not isinstance(trig, dict):
        raise CampaignError("trigger", "required: an object with family or name")
    _unknown(trig, TRIGGER_KEYS, "trigger.")
    if ("family" in trig) == ("name" in trig):
        raise CampaignError("trigger", "give exactly one of family or name")
    which = "family" if "family" in trig else "name"
    target_name = trig[which]
    if not isinstance(target_name, str) or len(target_name) > 128 or not NAME_RE.match(target_name) or \
            (which == "family" and "." in target_name):
        raise CampaignError(f"trigger.{which}", f"expected a record {which} like "
                            f"{'can' if which == 'family' else 'can.timeout'}, got {target_name!r:.60}")
    kinds = _strings(trig.get("kinds", ["begin", "event"]), "trigger.kinds")
    for i, k in enumerate(kinds):
        if k not in KINDS:
            raise CampaignError(f"trigger.kinds[{i}]", f"must be one of {', '.join(KINDS)}, got {k!r:.40}")
    if not kinds:
        raise CampaignError("trigger.kinds", "at least one kind")
    where = _conditions(trig.get("where", []))
    capture = _strings(doc.get("capture", list(CHANNELS)), "capture")
    for i, c in enumerate(capture):
        if c not in CHANNELS:
            raise CampaignError(f"capture[{i}]", f"unknown channel {c!r:.40} (known: {', '.join(CHANNELS)})")
    if not capture:
        raise CampaignError("capture", "at least one channel")
    pre = _num(doc, "pre_s", 30.0, 0.0, 600.0)
    post = _num(doc, "post_s", 10.0, 0.0, 600.0)
    if pre + post > window_s:
        raise CampaignError("pre_s", f"pre_s + post_s ({pre + post:g} s) exceeds this agent's ring buffer "
                            f"({window_s:g} s)")
    min_interval = _num(doc, "min_interval_s", 600.0, 0.0, 86400.0)
    max_snapshots = int(_num(doc, "max_snapshots", 100, 1, 10000, integer=True))
    start = _t(doc["start"], "start") if "start" in doc else None
    if "end" not in doc:
        raise CampaignError("end", "required: every campaign ends")
    end = _t(doc["end"], "end")
    if start is not None and end <= start:
        raise CampaignError("end", "must be after start")
    if end - (start if start is not None else now_wall) > MAX_SPAN_S:
        raise CampaignError("end", "a campaign runs at most 366 days")
    target = _table(doc, "target")
    _unknown(target, TARGET_KEYS, "target.")
    for key in ("fleets", "vehicles", "devices"):
        if key in target:
            _strings(target[key], f"target.{key}")
    sw = target.get("software", {})
    if not isinstance(sw, dict) or len(sw) > 64:
        raise CampaignError("target.software", "expected an object component → [versions] (at most 64)")
    for comp, versions in sw.items():
        if not 0 < len(comp) <= 128:
            raise CampaignError("target.software", "component names are 1-128 characters")
        _strings(versions, f"target.software.{comp}")
    trigger = Trigger(f"campaign:{cid}", (target_name,), frozenset(KINDS[k] for k in kinds), capture, pre, post,
                      min_interval, where, cid, max_snapshots)
    return Campaign(cid, revision, doc, trigger, start, end)


def targets(c: Campaign, me: Identity) -> str | None:
    """None when the campaign is meant for this device; otherwise why not."""
    t = c.doc.get("target", {})
    for key, mine in (("fleets", me.fleet), ("vehicles", me.vehicle), ("devices", me.device)):
        if key in t and mine not in t[key]:
            return f"{key[:-1]} {mine} not targeted"
    for comp, versions in t.get("software", {}).items():
        if me.software.get(comp) not in versions:
            return f"{comp} {me.software.get(comp) or '(absent)'} not targeted"
    return None


def summary(c: Campaign, now_wall: float) -> dict[str, Any]:
    return {"id": c.id, "revision": c.revision, "state": c.state(now_wall), "trigger": c.trigger.names[0],
            "start": int(c.start) if c.start is not None else None, "end": int(c.end)}

