"""Software identity for OTA consistency: each component's version and, where the vehicle provides it, its
software identification number (软件识别码, SWIN, GB 44496-2024), for the birth message.

`[agent.software.<name>]` says where to read them: a file (its first line) or a command (argv, no shell; the
first line of its stdout, 5 s timeout). The agent never asks an ECU itself: it does not transmit on any CAN
bus, so a SWIN that lives in an ECU must be provided by the vehicle's own software (a file its OTA client
writes, or its diagnostic service's command). Read once at start and on SIGHUP, not per connect: a component
changes with an OTA update, which restarts or reloads the agent, and a slow command must not delay the birth
message. A source that fails leaves the value out and logs why once; it never stops the agent.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Mapping

from .dataclass_shared import dataclass
from .errors import ConfigError
from .schema import opt

log = logging.getLogger("icvq.software")

MAX_CHARS = 128  # a SWIN or version longer than this is not one (GB 44496 leaves the format to the maker)


@dataclass(frozen=True)
class SoftwareSource:
    version_file: str = ""
    version_command: tuple[str, ...] = ()
    swin_file: str = ""
    swin_command: tuple[str, ...] = ()
    timeout_s: float = opt(5.0, min=0.1, max=60.0)

    def validate(self) -> None:
        for key in ("version_file", "swin_file"):
            path = getattr(self, key)
            if path and not path.startswith("/"):
                raise ConfigError("must be an absolute path", key=key)
        for key in ("version_command", "swin_command"):
            argv = getattr(self, key)
            if argv and not argv[0].startswith("/"):
                raise ConfigError("the command must start with an absolute path (no shell, no PATH lookup)", key=key)
        for what in ("version", "swin"):
            if getattr(self, f"{what}_file") and getattr(self, f"{what}_command"):
                raise ConfigError(f"set {what}_file or {what}_command, not both", key=f"{what}_command")


def clean(text: str) -> str | None:
    """The first line, stripped; None unless it is 1..128 printable characters."""
    line = text.splitlines()[0].strip() if text.strip() else ""
    return line if 0 < len(line) <= MAX_CHARS and line.isprintable() else None


Run = Callable[[tuple[str, ...], float], str]


def run_command(argv: tuple[str, ...], timeout_s: float) -> str:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, check=True,
                          stdin=subprocess.DEVNULL).stdout


def _read(name: str, what: str, path: str, argv: tuple[str, ...], timeout_s: float, run: Run) -> str | None:
    try:
        if path:
            with open(path, encoding="utf-8", errors="replace") as f:
                raw = f.read(4096)
        else:
            raw = run(argv, timeout_s)
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("software %s: cannot read its %s from %s: %s", name, what, path or argv[0], e)
        return None
    value = clean(raw)
    if value is None:
        log.warning("software %s: %s from %s is not 1..%d printable characters; left out", name, what,
                    path or argv[0], MAX_CHARS)
    return value


def read(components: Mapping[str, str], sources: Mapping[str, SoftwareSource],
         run: Run = run_command) -> tuple[dict[str, str], dict[str, str]]:
    """(versions, SWINs) by component: configured versions, overridden by what each source reads."""
    versions = dict(components)
    swins: dict[str, str] = {}
    for name, src in sorted(sources.items()):
        if src.version_file or src.version_command:
            v = _read(name, "version", src.version_file, src.version_command, src.timeout_s, run)
            if v is not None:
                versions[name] = v
        if src.swin_file or src.swin_command:
            s = _read(name, "SWIN", src.swin_file, src.swin_command, src.timeout_s, run)
            if s is not None:
                swins[name] = s
    return versions, swins
