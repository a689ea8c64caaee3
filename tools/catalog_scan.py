"""Reads agent/ with `ast` and lists what the code can emit: record names (with the literal field keys at each
call) and drop reasons. tests/spine/test_catalog.py compares the result with agent/catalog.py.

Why static and hand-written: a record name that only a rare branch emits (bus-off, a terminal link defect)
never shows up in a test run, but it is always in the source. The scan is deliberately literal-minded:
- an emitting call is `<…>.rec.<kind>(name, …)` for kind in event/begin/end/metric/health/snapshot, or an alias of
  one (`m = self.rec.metric`);
- a name is a string literal, a module-level constant, a loop variable over a module-level table of tuples,
  or — when it is computed (`machine.name`) — every string literal that looks like a record name
  (`family.word`) in the same package, which is where such names are defined (their fields are then left
  to the run-time check);
- fields are the string keys of dict displays at the call (spreads of a local or `self.` dict assigned from
  a display are followed; `m["k"] = …` stores into a local are included); keys built at run time are left to
  `catalog.undeclared()` at test time;
- a drop reason is a string (or f-string, its formatted parts shown as `<…>`) passed to a call whose name
  contains "drop", a key of a dict display passed to one, a subscript of a variable named `dropped`, or an
  element of a `for …, reason in (…)` table.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

KINDS = {"event", "begin", "end", "metric", "health", "snapshot"}
FAMILY = re.compile(r"\A(agent|system|display|link|can|sensor|storage|blackbox|uplink)\.[a-z][a-z0-9_]*\Z")


@dataclass
class Found:
    names: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))     # name -> "file:line"
    kinds: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))     # literal name -> kinds
    fields: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))    # name -> keys
    drops: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))     # reason -> "file:line"


def _str(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(str(v.value) if isinstance(v, ast.Constant) else "<…>" for v in node.values)
    return None


def _chain(node: ast.AST) -> list[str]:
    out = []
    while isinstance(node, ast.Attribute):
        out.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        out.append(node.id)
    return out[::-1]


def _is_rec_call(func: ast.AST, aliases: set[str]) -> bool:
    if isinstance(func, ast.Name):
        return func.id in aliases
    ch = _chain(func)
    return len(ch) >= 2 and ch[-1] in KINDS and ch[-2] == "rec"


class _Module:
    def __init__(self, path: Path, tree: ast.Module, package_names: set[str]) -> None:
        self.path = path
        self.tree = tree
        self.package_names = package_names
        self.consts: dict[str, ast.AST] = {}
        for node in tree.body:
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    if isinstance(t, ast.Name):
                        self.consts[t.id] = node.value
        self.self_dicts: dict[str, ast.Dict] = {}
        for sub in ast.walk(tree):
            if isinstance(sub, ast.Assign) and isinstance(sub.value, ast.Dict):
                for t in sub.targets:
                    ch = _chain(t)
                    if len(ch) == 2 and ch[0] == "self":
                        self.self_dicts[ch[1]] = sub.value

    def where(self, node: ast.AST) -> str:
        return f"{self.path}:{getattr(node, 'lineno', 0)}"


def _loop_tables(fn: ast.AST) -> dict[str, tuple[str, int]]:
    """Loop variables bound by `for a, b in TABLE` (statements and comprehensions): var -> (TABLE, index)."""
    out: dict[str, tuple[str, int]] = {}
    gens: list[tuple[ast.AST, ast.AST]] = []
    for node in ast.walk(fn):
        if isinstance(node, (ast.For, ast.comprehension)):
            gens.append((node.target, node.iter))
    for target, it in gens:
        if isinstance(it, ast.Name) and isinstance(target, ast.Tuple):
            for i, elt in enumerate(target.elts):
                if isinstance(elt, ast.Name):
                    out[elt.id] = (it.id, i)
    return out


def _names_of(arg: ast.AST, mod: _Module, loops: dict[str, tuple[str, int]]) -> set[str] | None:
    s = _str(arg)
    if s is not None:
        return {s}
    if isinstance(arg, ast.Name):
        if arg.id in loops:
            table, i = loops[arg.id]
            value = mod.consts.get(table)
            if isinstance(value, (ast.Tuple, ast.List)):
                out = set()
                for row in value.elts:
                    if isinstance(row, (ast.Tuple, ast.List)) and i < len(row.elts):
                        v = _str(row.elts[i])
                        if v is not None:
                            out.add(v)
                return out
        value = mod.consts.get(arg.id)
        if value is not None:
            v = _str(value)
            if v is not None:
                return {v}
    return None  # computed: the caller falls back to the package's record-like literals


def _dict_keys(node: ast.AST, mod: _Module, local_dicts: dict[str, list[ast.AST]],
               depth: int = 0) -> set[str]:
    keys: set[str] = set()
    if depth > 4:
        return keys
    if isinstance(node, ast.Dict):
        for k, v in zip(node.keys, node.values, strict=True):
            if k is None:  # **spread
                keys |= _dict_keys(v, mod, local_dicts, depth + 1)
            else:
                s = _str(k)
                if s is not None:
                    keys.add(s)
    elif isinstance(node, ast.Name):
        for n in local_dicts.get(node.id, []):
            keys |= _dict_keys(n, mod, local_dicts, depth + 1)
    elif isinstance(node, ast.Attribute) and _chain(node)[:1] == ["self"] and node.attr in mod.self_dicts:
        keys |= _dict_keys(mod.self_dicts[node.attr], mod, local_dicts, depth + 1)
    return keys


def _local_dicts(fn: ast.AST) -> dict[str, list[ast.AST]]:
    out: dict[str, list[ast.AST]] = defaultdict(list)
    for node in ast.walk(fn):
        targets: list[ast.expr] = []
        value: ast.AST | None = None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        for t in targets:
            if isinstance(t, ast.Name) and (isinstance(value, ast.Dict) or
                                            (isinstance(value, ast.Attribute) and _chain(value)[:1] == ["self"])):
                out[t.id].append(value)
            # m["k"] = … and m["a"], m["b"] = …
            for sub in ast.walk(t):
                if isinstance(sub, ast.Subscript) and isinstance(sub.value, ast.Name):
                    k = _str(sub.slice)
                    if k is not None:
                        out[sub.value.id].append(ast.Dict(keys=[ast.Constant(k)], values=[ast.Constant(None)]))
    return out


def _scan_emits(mod: _Module, found: Found) -> None:
    for fn in ast.walk(mod.tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        alias_kind = {t.id: _chain(node.value)[-1] for node in ast.walk(fn)
                      if isinstance(node, ast.Assign) and _is_rec_call(node.value, set())
                      for t in node.targets if isinstance(t, ast.Name)}
        aliases = set(alias_kind)
        loops = _loop_tables(fn)
        locals_ = _local_dicts(fn)
        for node in ast.walk(fn):
            if not (isinstance(node, ast.Call) and node.args and _is_rec_call(node.func, aliases)):
                continue
            names = _names_of(node.args[0], mod, loops)
            computed = names is None
            if names is None:
                names = mod.package_names
            kind = alias_kind[node.func.id] if isinstance(node.func, ast.Name) else _chain(node.func)[-1]
            # end(name, episode, fields); the others (name, fields)
            pos = 2 if kind == "end" else 1
            field_args = list(node.args[pos:pos + 1]) + [k.value for k in node.keywords if k.arg in ("fields", "value")]
            keys: set[str] = set()
            for a in field_args:
                keys |= _dict_keys(a, mod, locals_)
            for n in names:
                found.names[n].add(mod.where(node))
                if not computed:  # which of the package's names gets these keys is decided at run time
                    found.kinds[n].add(kind)
                    found.fields[n] |= keys


def _scan_drops(mod: _Module, found: Found) -> None:
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Call):
            fname = _chain(node.func)[-1:] or [""]
            if "drop" not in fname[0]:
                continue
            for a in node.args:
                s = _str(a)
                if s is not None:
                    found.drops[s].add(mod.where(node))
                elif isinstance(a, ast.Dict):
                    for k in a.keys:
                        ks = _str(k) if k is not None else None
                        if ks is not None:
                            found.drops[ks].add(mod.where(node))
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "dropped":
            s = _str(node.slice)
            if s is not None:
                found.drops[s].add(mod.where(node))
        elif isinstance(node, ast.For) and isinstance(node.target, ast.Tuple) and \
                any(isinstance(e, ast.Name) and e.id == "reason" for e in node.target.elts):
            idx = next(i for i, e in enumerate(node.target.elts) if isinstance(e, ast.Name) and e.id == "reason")
            if isinstance(node.iter, (ast.Tuple, ast.List)):
                for row in node.iter.elts:
                    if isinstance(row, ast.Tuple) and idx < len(row.elts):
                        s = _str(row.elts[idx])
                        if s is not None:
                            found.drops[s].add(mod.where(node))


def _record_like(tree: ast.Module) -> set[str]:
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and FAMILY.match(n.value)}


def scan(root: Path) -> Found:
    """Scan every module under `root` (the agent package directory)."""
    trees = {p: ast.parse(p.read_text(), str(p)) for p in sorted(root.rglob("*.py"))}
    by_package: dict[Path, set[str]] = defaultdict(set)
    for p, t in trees.items():
        by_package[p.parent] |= _record_like(t)
    found = Found()
    for p, t in trees.items():
        mod = _Module(p.relative_to(root.parent), t, by_package[p.parent])
        _scan_emits(mod, found)
        _scan_drops(mod, found)
    return found


if __name__ == "__main__":
    import sys

    f = scan(Path(sys.argv[1] if len(sys.argv) > 1 else "agent"))
    for n in sorted(f.names):
        print(n, sorted(f.fields[n]))
    print("drops:", sorted(f.drops))
