"""Module attributes served from a sibling module on first use (PEP 562), for code the idle daemon never runs.

No threads. agent.wire, agent.tls and agent.history keep their public names (`wire.decode`,
`tls.client_context`, `history.query_file`, ...) while the code behind them (wire_decode, tls_context,
history_query: ~80 KiB of Python objects together) is imported only when first asked for (issue 13: idle RSS).
Each of those modules imports the same names under TYPE_CHECKING, so mypy still checks their callers.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection
from typing import Any


def forward(module: str, sibling: str, names: Collection[str]) -> Callable[[str], Any]:
    """A module `__getattr__` for `module` that takes `names` from `<its package>.<sibling>`."""
    package = module.rpartition(".")[0]

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(f"{package}.{sibling}"), name)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")

    return __getattr__
