"""Hooks for what hangs off the daemon outside the data path: the control socket and the local history.

Kept apart from daemon.py so the field-engineer path can grow without touching the wiring.
"""

from __future__ import annotations

from typing import Any


def start(daemon: Any) -> Any:
    return None


def stop(daemon: Any) -> None:
    return None
