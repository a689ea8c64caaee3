"""Keeping secrets out of bundles. Three layers, because a bundle leaves the car on a laptop:

1. the config goes in as `cfg.plain(redact=True)` (fields declared secret) plus a name-based pass here for
   keys that look like credentials (a token used as MQTT username, a future probe's api_key), so a field
   nobody marked still does not leak;
2. files that hold secrets (`uplink.password_file`, `uplink.tls.key`) are never copied, only read here to
   learn the values to scrub;
3. every member's bytes are scrubbed of those values (also JSON-escaped) and of any PEM private-key block
   before they enter the archive: logs and error messages quote things.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..config import AgentConfig

REDACTED = "<redacted>"
# Whole-word-ish credential names; a key ending in _file/_path/_dir holds a location, which is kept.
SENSITIVE_KEY = re.compile(r"(pass(word|wd|phrase)?|secret|token|credential|api_?key|private_?key|auth)"
                           r"|^(user|username|psk)$", re.I)
LOCATION_KEY = re.compile(r"(_file|_path|_dir)$|^(key|cert|ca)$")
PEM_KEY = re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S)
MIN_SECRET = 4  # shorter values would scrub random bytes everywhere; nobody uses them as secrets anyway


def redact_plain(plain: Any, found: list[str], key: str = "") -> Any:
    """Name-based redaction on top of the schema's; collects the values it hid into `found`."""
    if isinstance(plain, dict):
        return {k: redact_plain(v, found, k) for k, v in plain.items()}
    if isinstance(plain, list):
        return [redact_plain(v, found, key) for v in plain]
    if isinstance(plain, str) and plain and plain != REDACTED and SENSITIVE_KEY.search(key) \
            and not LOCATION_KEY.search(key):
        found.append(plain)
        return REDACTED
    return plain


def _leaves(a: Any, b: Any) -> Iterable[str]:
    """Values present in `a` (unredacted) where `b` (redacted) says <redacted>."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in a:
            yield from _leaves(a[k], b.get(k))
    elif isinstance(a, list) and isinstance(b, list):
        for x, y in zip(a, b, strict=False):
            yield from _leaves(x, y)
    elif b == REDACTED and a not in (None, ""):
        yield str(a)


class Scrubber:
    def __init__(self) -> None:
        self.secrets: set[bytes] = set()
        self.notes: list[str] = []

    def add(self, value: str) -> None:
        value = value.strip()
        if len(value) < MIN_SECRET:
            return
        for v in (value, json.dumps(value)[1:-1]):
            self.secrets.add(v.encode())

    def add_file(self, path: str, what: str) -> None:
        if not path:
            return
        try:
            text = Path(path).read_text(errors="replace")
        except OSError as e:
            # Unreadable for us means also uncopyable by us: it cannot end up in the bundle either.
            self.notes.append(f"{what} {path} not readable ({e.strerror}): not read, so not in the bundle")
            return
        self.add(text)
        for line in text.splitlines():
            if not line.startswith("-----"):
                self.add(line)

    def __call__(self, data: bytes) -> bytes:
        data = PEM_KEY.sub(b"<redacted private key>", data)
        for s in sorted(self.secrets, key=len, reverse=True):
            data = data.replace(s, REDACTED.encode())
        return data


def effective_config(cfg: AgentConfig, scrub: Scrubber) -> dict[str, Any]:
    """The config for the bundle, and the scrubber primed with every secret value it hides."""
    raw = cfg.plain(redact=False)
    marked = cfg.plain(redact=True)
    for v in _leaves(raw, marked):
        scrub.add(v)
    found: list[str] = []
    out = redact_plain(marked, found)
    for v in found:
        scrub.add(v)
    scrub.add_file(cfg.uplink.password_file, "uplink.password_file")
    scrub.add_file(cfg.uplink.tls.key, "uplink.tls.key")
    return dict(out)
