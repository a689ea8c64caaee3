"""agent.dataclass_shared: the shared `__repr__`, frozen `__setattr__`/`__delattr__` and `__hash__` behave as the
ones `dataclasses` generates (same text, same errors, same hash), a class's own methods are kept, and every agent
module takes `dataclass` from it (issue 13: idle RSS)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, ClassVar

import pytest

from agent.dataclass_shared import dataclass

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


@pytest.mark.parametrize("kw", [{"frozen": True}, {"frozen": True, "slots": True}, {"unsafe_hash": True},
                                {"frozen": True, "eq": False}, {}])
def test_hash_and_frozen_errors_are_the_standard_ones(kw: dict[str, Any]) -> None:
    std, ours = twins(**kw)
    s, o = std(1, "y", b"", (2, 3)), ours(1, "y", b"", (2, 3))
    for kind in (None, object.__hash__):
        assert (std.__hash__ is kind) == (ours.__hash__ is kind)
    if std.__hash__ not in (None, object.__hash__):
        assert hash(o) == hash(s)
    acts = [lambda x: setattr(x, "a", 5), lambda x: delattr(x, "b")]
    if not kw.get("slots"):  # the generated one fails with TypeError there (its super() names the pre-slots class)
        acts.append(lambda x: setattr(x, "new", 5))
    for act in acts:
        errors = []
        for x in (s, o):
            try:
                act(x)
                errors.append(None)
            except Exception as e:  # noqa: BLE001 - the point is to compare whatever is raised
                errors.append((type(e), str(e)))
        assert errors[0] == errors[1]
    fresh = ours(1, "y", b"", (2, 3))
    assert dataclasses.replace(fresh, a=7).a == 7
    assert (fresh == ours(1, "y", b"", (2, 3))) == kw.get("eq", True)


MATRIX = [{"eq": eq, "frozen": fr, "unsafe_hash": uh, "order": od, "slots": sl}
          for eq in (True, False) for fr in (True, False) for uh in (True, False) for od in (False, True)
          for sl in (False, True) if eq or not od]


def _outcome(fn: Any) -> Any:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - compared, whatever it is
        return (type(e), str(e))


@pytest.mark.parametrize("own", ["", "eq", "hash", "eq+hash"])
@pytest.mark.parametrize("kw", MATRIX, ids=lambda kw: ",".join(k for k, v in kw.items() if v) or "plain")
def test_eq_and_hash_follow_the_standard_table(kw: dict[str, Any], own: str) -> None:
    """Equality and hashing of every decorator option, with and without the class's own __eq__/__hash__."""
    def body() -> type:
        ns: dict[str, Any] = {"__annotations__": {"a": "int", "b": "list[int] | None", "c": "str"},
                              "b": None, "c": dataclasses.field(default="c", compare=False)}
        if "eq" in own:
            ns["__eq__"] = lambda self, other: isinstance(other, type(self)) and self.a == other.a
        if "hash" in own:
            ns["__hash__"] = lambda self: 7
        return type("C", (), ns)

    std = _outcome(lambda: dataclasses.dataclass(**kw)(body()))
    ours = _outcome(lambda: dataclass(**kw)(body()))
    if isinstance(std, tuple):  # the standard decorator refuses the combination: so do we
        assert ours == std
        return
    for kind in (None, object.__hash__):
        assert (std.__hash__ is kind) == (ours.__hash__ is kind)
    pairs = [((1,), (1,)), ((1,), (2,)), ((1, None, "x"), (1, None, "y")), ((1, [2]), (1, [2])), ((1, [2]), (1,))]
    for left, right in pairs:
        s1, s2, o1, o2 = std(*left), std(*right), ours(*left), ours(*right)
        assert (o1 == o2, o1 != o2, o1 == left, o1 != None) == (s1 == s2, s1 != s2, s1 == left, s1 != None)  # noqa: E711
        if std.__hash__ not in (None, object.__hash__):
            assert _outcome(lambda o=o1: hash(o)) == _outcome(lambda s=s1: hash(s))


def test_a_plain_subclass_of_a_frozen_class_sets_other_attributes_as_generated() -> None:
    std, ours = twins(frozen=True)

    class S(std):  # type: ignore[valid-type,misc]
        pass

    class Sub(ours):  # type: ignore[valid-type,misc]
        pass

    s, o = S(1), Sub(1)
    s.extra = o.extra = 2
    del s.extra, o.extra
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'a'"):
        o.a = 3


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
    direct = [str(p.relative_to(AGENT)) for p in AGENT.rglob("*.py") if p.name != "dataclass_shared.py"
              and re.search(r"^from dataclasses import [^\n]*\bdataclass\b(?!_)|^\s*@dataclasses\.dataclass",
                            p.read_text(), re.M)]
    assert direct == []
