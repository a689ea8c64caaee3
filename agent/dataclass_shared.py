"""`dataclass` as the standard library's, with one shared `__repr__`, `__eq__`, field `__hash__` and frozen
`__setattr__`/`__delattr__` for all classes instead of ones generated per class.

No threads. Every module of the agent imports `dataclass` from here rather than from `dataclasses`; `field`,
`replace`, `fields` and the rest still come from `dataclasses`, and mypy sees the standard decorator.

Why (issue 13, RSS ≤ 1.1x the floor of what the agent imports): `dataclasses` compiles these methods for each class
from source text (and wraps `__repr__` for recursion): ≈ 2.5 KiB for `__repr__`, ≈ 2 KiB for `__eq__` and ≈ 3-4 KiB
more for a frozen class, of code and function objects per class. The idle daemon holds 39 dataclasses, 31 of them
frozen. VmRSS of the daemon at the benchmark's default config, 20 s after start, 3 runs each, before and after in
the same minutes: the shared `__repr__` 29.74 → 29.56 MiB, the shared `__eq__` 29.39 → 29.26 MiB; the frozen methods
took 60 KiB off [anon]. Each shared method behaves as the generated one: `__repr__` prints the same
`Name(field=value, ...)` over the fields with `repr=True` (`...` on recursion); `__eq__` compares the tuples of
fields with `compare=True` of two instances of the very same class (else NotImplemented); `__hash__` hashes that
same tuple, so it gives the same number, and is set or cleared by the standard decorator's table; assigning to or
deleting from a frozen instance raises `FrozenInstanceError` with the same message. `__init__` stays generated (it
must set the fields past the frozen `__setattr__`), and so does `__eq__` with `order=True`. A class's own methods,
and `repr=False`/`eq=False`, are kept as the standard decorator keeps them. The shared methods are slower per call
(they read `fields()`); none is on a hot path.
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
            explicit_hash = "__hash__" in c.__dict__ and not (c.__dict__["__hash__"] is None
                                                              and "__eq__" in c.__dict__)
            # order=True needs the generated __eq__'s company; a class's own __eq__ is kept as is.
            share_eq = kw.get("eq", True) and not kw.get("order", False) and "__eq__" not in c.__dict__
            made = dataclasses.dataclass(c, **{**kw, "repr": False, "eq": not share_eq and kw.get("eq", True)})
            if not own_repr:
                made.__repr__ = _fields_repr
            if share_eq:
                made.__eq__ = _fields_eq
            if kw.get("frozen", False):
                # The standard decorator refuses a frozen class that defines these itself: they are its own.
                made.__setattr__ = _frozen_setattr
                made.__delattr__ = _frozen_delattr
            # The standard decorator's __hash__ table, for the eq= the class asked for.
            if kw.get("unsafe_hash", False) or (kw.get("eq", True) and kw.get("frozen", False) and not explicit_hash):
                made.__hash__ = _fields_hash
            elif kw.get("eq", True) and not explicit_hash:
                made.__hash__ = None
            return made

        return wrap if cls is None else wrap(cls)


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


def _compared(self: Any) -> tuple[Any, ...]:
    return tuple(getattr(self, f.name) for f in dataclasses.fields(self) if f.compare)


def _fields_eq(self: Any, other: Any) -> Any:
    if other.__class__ is self.__class__:
        return _compared(self) == _compared(other)
    return NotImplemented
