"""Campaigns on disk, so they survive a reboot without a broker: one private JSON file, replaced atomically.

Write: a new file beside the old one (mode 0600: campaigns name vehicles), fsync, rename over the old one,
fsync the directory — a power cut leaves either the old or the new set, never a torn file. Read: whatever
does not parse or no longer validates is logged and skipped, never fatal.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..private import replace_private

log = logging.getLogger("icvq.blackbox")

FORMAT = 1


def save(path: Path, docs: Sequence[dict[str, Any]]) -> None:
    body = json.dumps({"v": FORMAT, "campaigns": list(docs)}, separators=(",", ":"), sort_keys=True).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_private(path, body, 0o600)


def load(path: Path) -> list[dict[str, Any]]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        log.error("campaigns file %s unreadable (%s); starting without campaigns", path, e)
        return []
    try:
        top = json.loads(raw)
        docs = top["campaigns"] if isinstance(top, dict) and top.get("v") == FORMAT else None
    except (ValueError, KeyError, TypeError):
        docs = None
    if not isinstance(docs, list):
        log.error("campaigns file %s is not a v%d campaigns file; ignoring it", path, FORMAT)
        return []
    return [d for d in docs if isinstance(d, dict)]
