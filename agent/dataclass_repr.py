"""`dataclass` as the standard library's, with one shared `__repr__` instead of one generated per class.

No threads. Every module of the agent imports `dataclass` from here rather than from `dataclasses`; `field`,
`replace`, `fields` and the rest still come from `dataclasses`, and mypy sees the standard decorator.

Why (issue 13, RSS ≤ 1.1x the floor of what the agent imports): `dataclasses` compiles a `__repr__` for each
class from source text and wraps it for recursion, ≈ 2.5 KiB of code and function objects per class. The idle
daemon holds 39 dataclasses; one shared `__repr__` saved 0.18 MiB of VmRSS (the daemon at the benchmark's default
config, 20 s after start, 3 runs each: 29.74 → 29.56 MiB). The output is the same text `dataclasses` makes:
`Name(field=value, ...)` over the fields with `repr=True`, `...` on recursion. A class's own `__repr__`, or
`repr=False`, is kept as the standard decorator keeps it.
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
            own = kw.get("repr", True) is False or "__repr__" in c.__dict__
            made = dataclasses.dataclass(c, **{**kw, "repr": False})
            if not own:
                made.__repr__ = _fields_repr
            return made

        return wrap if cls is None else wrap(cls)


@reprlib.recursive_repr()
def _fields_repr(self: Any) -> str:
    shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self) if f.repr)
    return f"{self.__class__.__qualname__}({shown})"
