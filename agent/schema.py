"""Typed, frozen configuration objects built from plain TOML tables.

A config section is a frozen dataclass; `opt()` attaches range/choice limits, secrecy and docs to a field.
`build()` turns a table into the dataclass and refuses unknown keys, wrong types and out-of-range values with
an error naming the full key path and the file that set it (Telegraf's rule: unknown keys are startup errors).
It goes on after an error and raises them all at the end (`ConfigErrors`), so one run of `check-config` names
every mistake.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, Union

from .errors import ConfigError, collecting, raise_collected

T = TypeVar("T")
Origin = Callable[[str], str]

_MISSING: Any = dataclasses.MISSING


def opt(default: Any = _MISSING, *, min: float | None = None, max: float | None = None,
        choices: tuple[Any, ...] | None = None, secret: bool = False, factory: Any = _MISSING,
        check: Callable[[Any], str] | None = None) -> Any:
    """`check(value)` returns what is wrong with one value ("" if nothing): a rule of a single key, checked
    with the others so one run reports it beside them (a `validate()` only runs once every key is right)."""
    meta = {"min": min, "max": max, "choices": choices, "secret": secret, "check": check}
    if factory is not _MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _no_origin(_: str) -> str:
    return ""


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(tp: Any, value: Any, path: str, origin: Origin) -> Any:
    def fail(msg: str) -> ConfigError:
        return ConfigError(msg, key=path, source=origin(path))

    ot = typing.get_origin(tp)
    args = typing.get_args(tp)
    if ot in (Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        if value is None and len(non_none) < len(args):
            return None
        if len(non_none) == 1:
            return _convert(non_none[0], value, path, origin)  # keeps the inner key path in errors
        for a in non_none:
            try:
                return _convert(a, value, path, origin)
            except ConfigError:
                continue
        raise fail(f"expected {' or '.join(_type_name(a) for a in non_none)}, got {type(value).__name__}")
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise fail(f"expected a table, got {type(value).__name__}")
        return build(tp, value, path=path, origin=origin)
    if ot in (list, tuple):
        if not isinstance(value, list):
            raise fail(f"expected an array, got {type(value).__name__}")
        item = args[0] if args else Any
        return tuple(_convert(item, v, _join(path, i), origin) for i, v in enumerate(value))
    if ot in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise fail(f"expected a table, got {type(value).__name__}")
        vt = args[1] if len(args) == 2 else Any
        return types.MappingProxyType({str(k): _convert(vt, v, _join(path, str(k)), origin)
                                       for k, v in value.items()})
    if tp is bool:
        if not isinstance(value, bool):
            raise fail(f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail(f"expected a string, got {value!r}")
        return value
    raise fail(f"unsupported config type {_type_name(tp)}")


def _check_limits(f: dataclasses.Field, value: Any, path: str, origin: Origin) -> None:
    lo, hi, choices = f.metadata.get("min"), f.metadata.get("max"), f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"must be one of {', '.join(map(repr, choices))}, got {value!r}",
                          key=path, source=origin(path))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if lo is not None and value < lo:
            raise ConfigError(f"must be >= {lo}, got {value!r}", key=path, source=origin(path))
        if hi is not None and value > hi:
            raise ConfigError(f"must be <= {hi}, got {value!r}", key=path, source=origin(path))
    check = f.metadata.get("check")
    if check is not None and (wrong := check(value)):
        raise ConfigError(wrong, key=path, source=origin(path))


def build(cls: type[T], data: Mapping[str, Any], *, path: str = "", origin: Origin = _no_origin) -> T:
    """Build dataclass `cls` from `data`; `path` prefixes key paths in errors."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    errors: list[ConfigError] = []
    for key in data:
        if key not in fields:
            known = ", ".join(sorted(fields)) or "none"
            errors.append(ConfigError(f"unknown key (known keys here: {known})", key=_join(path, key),
                                      source=origin(_join(path, key))))
    kwargs: dict[str, Any] = {}

    def one(f: dataclasses.Field, key: str) -> None:
        value = _convert(hints[f.name], data[f.name], key, origin)
        _check_limits(f, value, key, origin)
        kwargs[f.name] = value

    for name, f in fields.items():
        key = _join(path, name)
        if name in data:
            collecting(errors, lambda f=f, key=key: one(f, key))  # type: ignore[misc]
        elif f.default is _MISSING and f.default_factory is _MISSING:
            errors.append(ConfigError("required key is missing", key=key, source=origin(path)))
    raise_collected(errors)
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as e:
            full = _join(path, e.key) if e.key else path
            raise ConfigError(e.message, key=full, source=origin(full)) from None
    return obj


def to_plain(obj: Any, *, redact: bool = False) -> Any:
    """Back to plain data (for digests, dumps and `check-config`); secrets become "<redacted>"."""
    plain = getattr(obj, "plain", None)
    if callable(plain) and not dataclasses.is_dataclass(obj):  # e.g. agent.disabled.DisabledProbe
        return plain(redact=redact)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            out[f.name] = "<redacted>" if redact and f.metadata.get("secret") and v else to_plain(v, redact=redact)
        return out
    if isinstance(obj, Mapping):
        return {k: to_plain(v, redact=redact) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, redact=redact) for v in obj]
    return obj
