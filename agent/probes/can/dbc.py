"""DBC handling: load with cantools (the optional `dbc` extra, imported only when a bus names a DBC) and
resolve the sensor map against it at startup, so a wrong message or signal name stops the agent with the
key path instead of silently watching nothing."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ...errors import ConfigError
from .config import BusConfig, Config, CounterConfig, SensorConfig, StatusConfig
from .e2e import E2ESpec
from .fields import BitField
from .rules import ConditionError, parse_condition
from .spec import SensorSpec, StatusSpec

log = logging.getLogger("icvq.probe.can")
PREFIX = "probes.can"
_UNUSED_VAL = re.compile(r"VAL_ (\d+) (\w+)")


def _cantools(key: str) -> Any:
    try:
        import cantools
    except ImportError:
        raise ConfigError("a DBC needs cantools: install the extra, pip install 'icvq-agent[dbc]'",
                          key=key) from None
    return cantools


# Parsed DBCs by (path, mtime, size): a reload (SIGHUP) or several buses sharing a file parse it once.
_CACHE: dict[tuple[str, int, int], Any] = {}


def load_dbc(path: str, key: str) -> Any:
    """Load a DBC leniently. Real-world files carry VAL_ tables for signals that no longer exist (opendbc's
    tesla_can.dbc does); cantools refuses the whole file for that, so those entries are dropped and named."""
    cantools = _cantools(key)
    try:
        st = Path(path).stat()
        ident = (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)
        if ident in _CACHE:
            return _CACHE[ident]
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ConfigError(f"cannot read DBC {path}: {e.strerror}", key=key) from None
    dropped: list[str] = []
    for _ in range(3):
        try:
            db = cantools.database.load_string(text, database_format="dbc", strict=False)
            break
        except Exception as e:  # noqa: BLE001 - cantools raises several unrelated types for bad files
            unused = _UNUSED_VAL.findall(str(e)) if "unused VAL_" in str(e) else []
            if not unused:
                raise ConfigError(f"cannot parse DBC {path}: {str(e).splitlines()[0][:200]}", key=key) from None
            for fid, sig in unused:
                text = re.sub(rf"^VAL_ {fid} {sig} .*?;\s*$", "", text, flags=re.M | re.S)
                dropped.append(f"{fid}/{sig}")
    else:
        raise ConfigError(f"cannot parse DBC {path}: VAL_ entries for unknown signals", key=key)
    if dropped:
        log.warning("DBC %s: ignored value tables of unknown signals: %s", path, ", ".join(dropped))
    if len(_CACHE) > 16:
        _CACHE.clear()
    _CACHE[ident] = db
    return db


def _signal(msg: Any, name: str, key: str) -> Any:
    try:
        sig = msg.get_signal_by_name(name)
    except KeyError:
        known = ", ".join(s.name for s in msg.signals[:20])
        raise ConfigError(f"unknown signal {name!r} in {msg.name} (signals: {known})", key=key) from None
    if sig.multiplexer_ids:
        raise ConfigError(f"{name} is multiplexed; multiplexed signals are not supported", key=key)
    return sig


def _field_of_signal(sig: Any) -> BitField:
    choices = {int(k): str(v) for k, v in (sig.choices or {}).items()}
    return BitField(sig.start, sig.length, sig.byte_order == "little_endian", bool(sig.is_signed),
                    float(sig.scale), float(sig.offset), MappingProxyType(choices))


def _field(cfg: CounterConfig | StatusConfig, msg: Any, key: str, signed: bool = False) -> BitField:
    if cfg.signal:
        if msg is None:
            raise ConfigError(f"signal {cfg.signal!r} needs a message from the bus DBC", key=f"{key}.signal")
        return _field_of_signal(_signal(msg, cfg.signal, f"{key}.signal"))
    try:
        return BitField(cfg.start_bit, cfg.length, cfg.byte_order == "little_endian", signed)
    except ValueError as e:
        raise ConfigError(str(e), key=f"{key}.start_bit") from None


def _message(db: Any, s: SensorConfig, key: str) -> Any:
    if s.message:
        if db is None:
            raise ConfigError(f"message {s.message!r} needs a dbc on bus {s.bus!r} (or give the id)",
                              key=f"{key}.message")
        try:
            msg = db.get_message_by_name(s.message)
        except KeyError:
            raise ConfigError(f"unknown message {s.message!r} in the bus DBC", key=f"{key}.message") from None
        if s.id >= 0 and (s.id != msg.frame_id or s.extended != msg.is_extended_frame):
            raise ConfigError(f"id 0x{s.id:X} does not match {s.message} (0x{msg.frame_id:X})", key=f"{key}.id")
        return msg
    if db is None:
        return None
    return next((m for m in db.messages if m.frame_id == s.id and m.is_extended_frame == s.extended), None)


def _cycle_s(s: SensorConfig, msg: Any, key: str) -> float:
    if s.cycle_ms > 0:
        return s.cycle_ms / 1000
    cycle = getattr(msg, "cycle_time", None) if msg is not None else None
    if not cycle:
        where = f"{msg.name} has no GenMsgCycleTime in the DBC" if msg is not None else "no DBC message"
        raise ConfigError(f"{where}: set cycle_ms", key=f"{key}.cycle_ms")
    return float(cycle) / 1000


def _status(st: StatusConfig, msg: Any, key: str) -> StatusSpec:
    fld = _field(st, msg, key, st.signed)
    names = {label: int(raw) * fld.scale + fld.offset for raw, label in fld.choices.items()}
    try:
        cond = parse_condition(st.fault_when, names)
    except ConditionError as e:
        raise ConfigError(str(e), key=f"{key}.fault_when") from None
    return StatusSpec(st.label, st.signal, fld, cond, st.vss, st.debounce, st.cause)


def resolve_sensor(s: SensorConfig, bus: BusConfig, db: Any, key: str) -> SensorSpec:
    msg = _message(db, s, key)
    if msg is None and (s.counter.signal or any(st.signal for st in s.status)):
        raise ConfigError(f"id 0x{s.id:X} is not in the bus DBC: signals need a message", key=f"{key}.id")
    can_id = msg.frame_id if msg is not None else s.id
    extended = msg.is_extended_frame if msg is not None else s.extended
    length = s.length or (msg.length if msg is not None else 0)
    if length > (64 if bus.fd else 8):
        raise ConfigError(f"length {length} does not fit a {'FD' if bus.fd else 'classic'} frame",
                          key=f"{key}.length")
    cycle = _cycle_s(s, msg, key)
    counter = _field(s.counter, msg, f"{key}.counter") if s.counter.enabled else None
    modulo = (s.counter.modulo or 1 << counter.length) if counter else 0
    e2e = None
    if s.e2e.enabled:
        e = s.e2e
        e2e = E2ESpec(e.profile, e.data_id, tuple(e.data_id_list), e.data_id_mode, e.offset_bits, e.length)
    status = tuple(_status(st, msg, f"{key}.status[{i}]") for i, st in enumerate(s.status))
    need = max([f.min_bytes for f in [counter, *(st.field for st in status)] if f] +
               [e2e.header_bytes if e2e else 0, e2e.length if e2e else 0])
    if length and need > length:
        raise ConfigError(f"the fields need {need} bytes but the frame has {length}", key=key)
    if s.mode == "bcm" and need > 8:
        raise ConfigError("mode = \"bcm\" watches classic 8-byte payloads only", key=f"{key}.mode")
    timeout = s.timeout_ms / 1000 if s.timeout_ms else cycle * s.timeout_factor
    # BCM is a kernel service: on python-can buses (demo, tests) the same checks run in userspace.
    mode = s.mode if bus.interface == "socketcan" else "raw"
    return SensorSpec(name=s.name, bus=s.bus, can_id=can_id, extended=extended, cycle_s=cycle,
                      timeout_s=timeout, mode=mode, message=msg.name if msg is not None else "",
                      length=length, min_length=need, counter=counter, counter_modulo=modulo, e2e=e2e,
                      status=status)


def resolve(cfg: Config) -> list[SensorSpec]:
    """Every sensor of the config, checked against its bus DBC; ConfigError names the key path."""
    dbs: dict[str, Any] = {}
    for i, b in enumerate(cfg.bus):
        dbs[b.name] = load_dbc(b.dbc, f"{PREFIX}.bus[{i}].dbc") if b.dbc else None
    buses: Mapping[str, BusConfig] = {b.name: b for b in cfg.bus}
    specs = [resolve_sensor(s, buses[s.bus], dbs[s.bus], f"{PREFIX}.sensor[{i}]") for i, s in enumerate(cfg.sensor)]
    seen: dict[tuple[str, int], str] = {}
    for i, sp in enumerate(specs):
        other = seen.get((sp.bus, sp.key))
        if other:
            raise ConfigError(f"{sp.id_text} on {sp.bus} is already watched as sensor {other!r}",
                              key=f"{PREFIX}.sensor[{i}]")
        seen[(sp.bus, sp.key)] = sp.name
    return specs
