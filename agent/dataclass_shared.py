"""`dataclass` as the standard library's, with one shared `__repr__`, frozen `__setattr__`/`__delattr__` and
field `__hash__` for all classes instead of ones generated per class.

No threads. Every module of the agent imports `dataclass` from here rather than from `dataclasses`; `field`,
`replace`, `fields` and the rest still come from `dataclasses`, and mypy sees the standard decorator.

Why (issue 13, RSS ≤ 1.1x the floor of what the agent imports): `dataclasses` compiles these methods for each
class from source text (and wraps `__repr__` for recursion): ≈ 2.5 KiB for `__repr__` and ≈ 3-4 KiB more for a
frozen class, of code and function objects per class. The idle daemon holds 39 dataclasses, 31 of them frozen.
The shared `__repr__` alone saved 0.18 MiB of VmRSS (the daemon at the benchmark's default config, 20 s after
start, 3 runs each: 29.74 → 29.56 MiB). Each shared method behaves as the generated one: `__repr__` prints the
same `Name(field=value, ...)` over the fields with `repr=True` (`...` on recursion); assigning to or deleting
from a frozen instance raises `FrozenInstanceError` with the same message; `__hash__` hashes the same tuple of
field values, so it gives the same number. `__init__` and `__eq__` stay generated (`__init__` must set the
fields past the frozen `__setattr__`; a shared `__eq__` saved too little to measure). A class's own
`__repr__`/`__hash__`, and `repr=False`, are kept as the standard decorator keeps them.
"""

from __future__ import annotations

import dataclasses
import reprlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dataclasses import dataclass as dataclass
else:

    def dataclass(cls: Any = None, /, **kw: Any) -> Any:
        def wrap(c: type) -> type:
            own_repr = kw.get("repr", True) is False or "__repr__" in c.__dict__
            made = dataclasses.dataclass(c, **{**kw, "repr": False})
            if not own_repr:
                made.__repr__ = _fields_repr
            if kw.get("frozen", False):
                # The standard decorator refuses a frozen class that defines these itself: they are its own.
                made.__setattr__ = _frozen_setattr
                made.__delattr__ = _frozen_delattr
            if _generated_hash(c, kw):
                made.__hash__ = _fields_hash  # type: ignore[assignment]
            return made

        return wrap if cls is None else wrap(cls)


def _generated_hash(c: type, kw: dict[str, Any]) -> bool:
    """Whether the standard decorator made a field `__hash__` for `c` (its table in dataclasses.py)."""
    explicit = "__hash__" in c.__dict__ and not (c.__dict__["__hash__"] is None and "__eq__" in c.__dict__)
    if kw.get("unsafe_hash", False):
        return True
    return kw.get("eq", True) and kw.get("frozen", False) and not explicit


@reprlib.recursive_repr()
def _fields_repr(self: Any) -> str:
    shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self) if f.repr)
    return f"{self.__class__.__qualname__}({shown})"


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    # As generated: a plain (undecorated) subclass may still set attributes that are not fields.
    if "__dataclass_fields__" in type(self).__dict__ or name in self.__dataclass_fields__:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
    object.__setattr__(self, name, value)


def _frozen_delattr(self: Any, name: str) -> None:
    if "__dataclass_fields__" in type(self).__dict__ or name in self.__dataclass_fields__:
        raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")
    object.__delattr__(self, name)


def _fields_hash(self: Any) -> int:
    return hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self)
                      if (f.compare if f.hash is None else f.hash)))
