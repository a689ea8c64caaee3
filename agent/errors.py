"""The agent's small exception tree.

ConfigError is fatal at start (exit 78, EX_CONFIG); ProbeError degrades one probe while the others go on;
UplinkError is transient and retried with back-off; WireError marks an untrusted payload as rejected;
Malformed is one unusable piece of input from a source (an AT line, mmcli JSON, a gpsd report): the probe
counts it per source and skips it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

EX_CONFIG = 78
T = TypeVar("T")


class IcvqError(Exception):
    """Base of every error the agent raises on purpose."""


class ConfigError(IcvqError):
    """A configuration problem; the message names the file and the key path."""

    def __init__(self, message: str, *, key: str = "", source: str = "") -> None:
        self.message = message
        self.key = key
        self.source = source
        self.errors: list[ConfigError] = [self]  # every error found; more than one in a ConfigErrors
        where = ": ".join(p for p in (source, key) if p)
        super().__init__(f"{where}: {message}" if where else message)

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "key": self.key, "message": self.message, "text": str(self)}


class ConfigErrors(ConfigError):
    """Several config errors at once: loading goes on after the first so one run names them all."""

    def __init__(self, errors: list[ConfigError]) -> None:
        super().__init__(f"{len(errors)} errors:\n" + "\n".join(f"  {e}" for e in errors))
        self.errors = errors


def collecting(errors: list[ConfigError], fn: Callable[[], T]) -> T | None:
    """Run `fn`; on ConfigError keep its errors in `errors` and return None, so the caller goes on."""
    try:
        return fn()
    except ConfigError as e:
        errors.extend(e.errors)
        return None


def raise_collected(errors: list[ConfigError]) -> None:
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise ConfigErrors(errors)


class ProbeError(IcvqError):
    """A probe cannot read its source right now; the probe is degraded and retried."""


class Malformed(IcvqError, ValueError):
    """Input that does not follow its source's format. Parsers are pure and raise it; the caller counts it
    (`malformed_at`, `malformed_mmcli`, `malformed_gnss`, ...) and goes on. A ValueError, so a parser may let
    int()/float() failures of its own checks read the same way."""


class UplinkError(IcvqError):
    """The broker cannot be reached or refused us; retried with back-off."""


class WireError(IcvqError):
    """A payload does not follow the wire contract. `reason` is a short stable code for counting."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
