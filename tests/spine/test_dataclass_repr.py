"""agent.dataclass_repr: the shared `__repr__` prints what the standard `dataclasses` one prints, keeps a class's
own `__repr__` and `repr=False`, and every agent module takes `dataclass` from it (issue 13: idle RSS)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, ClassVar

import pytest

from agent.dataclass_repr import dataclass

AGENT = Path(__file__).resolve().parents[2] / "agent"


def twins(**kw: Any) -> tuple[type, type]:
    """The same class made by the standard decorator and by ours."""

    def body() -> type:
        class C:
            count: ClassVar[int] = 0
            a: int
            b: str = "x"
            hidden: bytes = dataclasses.field(default=b"secret", repr=False)
            nested: Any = None

        return C

    return dataclasses.dataclass(**kw)(body()), dataclass(**kw)(body())


@pytest.mark.parametrize("kw", [{}, {"frozen": True}, {"slots": True}, {"frozen": True, "slots": True},
                                {"eq": False}, {"order": True}])
def test_repr_is_the_standard_text(kw: dict[str, Any]) -> None:
    std, ours = twins(**kw)
    for args in ((1,), (2, "y'z"), (3, "", b"", [1, {"k": 2.5}])):
        assert repr(ours(*args)) == repr(std(*args))
    assert repr(ours(1, nested=ours(2))) == repr(std(1, nested=std(2)))
    assert ours(1) == ours(1) if kw.get("eq", True) else ours(1) != ours(1)


def test_recursion_prints_ellipsis_as_the_standard_one_does() -> None:
    std, ours = twins()
    s, o = std(1), ours(1)
    s.nested, o.nested = s, o
    assert repr(o) == repr(s) == "twins.<locals>.body.<locals>.C(a=1, b='x', nested=...)"


def test_subclass_shows_its_own_fields() -> None:
    @dataclass
    class Base:
        a: int = 1

    @dataclass(frozen=False)
    class Child(Base):
        b: int = 2

    assert repr(Child()).endswith("Child(a=1, b=2)")


def test_own_repr_and_repr_false_are_kept() -> None:
    @dataclass
    class Own:
        a: int = 1

        def __repr__(self) -> str:
            return "own"

    @dataclass(repr=False)
    class Off:
        a: int = 1

    assert repr(Own()) == "own"
    assert repr(Off()).startswith("<") and "Off object at" in repr(Off())


def test_every_agent_module_takes_dataclass_from_here() -> None:
    direct = [str(p.relative_to(AGENT)) for p in AGENT.rglob("*.py") if p.name != "dataclass_repr.py"
              and re.search(r"^from dataclasses import [^\n]*\bdataclass\b(?!_)|^\s*@dataclasses\.dataclass",
                            p.read_text(), re.M)]
    assert direct == []
