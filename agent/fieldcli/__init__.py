"""The field engineer's commands of `icvq` (status, events, tail, flush, dump, inspect), one module each
so agent/cli.py stays a dispatcher."""

from __future__ import annotations

from typing import Any

from . import client, dump, events, flush, status


def register(sub: Any, handlers: dict[str, Any]) -> None:
    for mod in (status, events, flush, dump):
        mod.register(sub, handlers, client.add_common)
