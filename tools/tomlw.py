"""A small TOML writer for the configs that the demo and the tests generate (tomllib only reads)."""

from __future__ import annotations

import json
from typing import Any


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are valid TOML basic-string escapes
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {type(v).__name__}")


def to_toml(sections: dict[str, Any]) -> str:
    """Tables keyed by their dotted name; a list of dicts becomes an array of tables ([[name]])."""
    out: list[str] = []
    for name, body in sections.items():
        tables = body if isinstance(body, list) else [body]
        for t in tables:
            out.append(f"[[{name}]]" if isinstance(body, list) else f"[{name}]")
            out += [f"{k} = {toml_value(v)}" for k, v in t.items()]
            out.append("")
    return "\n".join(out)
