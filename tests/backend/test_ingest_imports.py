"""tools/ingest has no import cycles: every import of one of its modules by another — at the top, inside a
function, or under TYPE_CHECKING — is an edge, and the graph must be acyclic (read from the AST, nothing is
imported). A cycle makes the next change order-dependent: which module finishes initialising first."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "tools" / "ingest"
PREFIX = "tools.ingest."


def _targets(node: ast.AST, modules: set[str]) -> set[str]:
    out: set[str] = set()
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level == 1:
            base = node.module or ""
        elif node.level == 0 and (node.module or "").startswith(PREFIX):
            base = (node.module or "")[len(PREFIX):]
        else:
            return out
        # `from . import rows` names a module; `from .rows import Message` names one inside it.
        names = [base] if base else [a.name for a in node.names]
    else:
        return out
    for n in names:
        n = n.removeprefix(PREFIX)
        if n.split(".")[0] in modules:
            out.add(n.split(".")[0])
    return out


def import_graph(pkg: Path) -> dict[str, set[str]]:
    modules = {p.stem for p in pkg.glob("*.py")}
    return {p.stem: {t for node in ast.walk(ast.parse(p.read_text(), str(p))) for t in _targets(node, modules)}
            - {p.stem} for p in sorted(pkg.glob("*.py"))}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m):], m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_checker_finds_a_cycle_through_a_lazy_import() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    tree = ast.parse("from . import rows\nfrom .store import x\ndef f():\n    from tools.ingest.predict import y\n"
                     "import json\n")
    assert {t for node in ast.walk(tree) for t in _targets(node, {"rows", "store", "predict"})} == {
        "rows", "store", "predict"}


def test_tools_ingest_has_no_import_cycles() -> None:
    graph = import_graph(PKG)
    assert {"predict", "predict_eval", "predict_versions", "store", "store_pg"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in tools/ingest: " + " → ".join(cycle or [])
