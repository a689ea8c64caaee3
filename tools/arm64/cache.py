"""Cache directory ($ICVQ_ARM64_CACHE or ~/.cache/icvq-arm64), build locks and stamps."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from tools.vm.cache import read_stamp, write_stamp

__all__ = ["ArmError", "cache_root", "digest", "locked", "prune", "read_stamp", "write_stamp"]


class ArmError(RuntimeError):
    """The arm64 userland or the emulator could not be set up or run."""


def cache_root() -> Path:
    env = os.environ.get("ICVQ_ARM64_CACHE")
    root = Path(env) if env else Path.home() / ".cache" / "icvq-arm64"
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """One build at a time per cache (two `make test-arm64` at once must not debootstrap twice)."""
    with (cache_root() / f".{name}.lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:12]


def prune(prefix: str, keep: Path) -> None:
    """Remove older builds (`<prefix>*` dirs and stamps) once `keep` replaced them: a root is ~250 MB."""
    for old in cache_root().glob(prefix + "*"):
        if old.name in (keep.name, keep.name + ".json") or old.name.startswith(keep.name + "."):
            continue
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
