"""The agent's pure-Python dependencies for the arm64 Python, as wheels from PyPI unpacked into a cached dir.

Which ones: the [project] dependencies of pyproject.toml that apply to Python 3.11 on Linux, minus those the
Debian root provides (C extensions: msgpack, psutil, see rootfs.INCLUDE). pip resolves them (with their own
dependencies) for `--platform any --implementation py`, so only py3-none-any wheels qualify: nothing
compiled for the host can slip in.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import Requirement

from .cache import ArmError, cache_root, digest, locked, prune, read_stamp, write_stamp

REPO = Path(__file__).resolve().parents[2]
FROM_DEBIAN = frozenset({"msgpack", "psutil"})
# The target interpreter: Debian bookworm's Python on aarch64.
TARGET_ENV = {"python_version": "3.11", "python_full_version": "3.11.2", "platform_machine": "aarch64",
              "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
              "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}


def requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - the host runs 3.11
        import tomli as tomllib
    deps: list[str] = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    env: dict[str, Any] = {**default_environment(), **TARGET_ENV}
    out = []
    for spec in deps:
        req = Requirement(spec)
        if req.name.lower() in FROM_DEBIAN or (req.marker is not None and not req.marker.evaluate(env)):
            continue
        out.append(str(req))
    return sorted(out)


def site_dir(reqs: list[str]) -> Path:
    return cache_root() / f"site-py311-{digest(*reqs)}"


def ensure_site(log: bool = True) -> Path:
    """A directory for PYTHONPATH holding the wheels' packages (built once per requirement set)."""
    reqs = requirements()
    site = site_dir(reqs)
    stamp = site.with_name(site.name + ".json")
    if read_stamp(stamp) is not None and site.is_dir():
        return site
    with locked("site"):
        if read_stamp(stamp) is not None and site.is_dir():
            return site
        started = time.monotonic()
        if log:
            print(f"arm64: pip install --target (pure-Python wheels): {' '.join(reqs)}", flush=True)
        tmp = site.with_name(site.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
               "--target", str(tmp), "--upgrade", "--only-binary=:all:", "--platform", "any",
               "--python-version", "3.11", "--implementation", "py", *reqs]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise ArmError(f"pip could not fetch the wheels: {' '.join(cmd)}\n{proc.stdout[-2000:]}"
                           f"{proc.stderr[-3000:]}")
        installed = sorted(p.name.removesuffix(".dist-info") for p in tmp.glob("*.dist-info"))
        shutil.rmtree(site, ignore_errors=True)
        tmp.rename(site)
        write_stamp(stamp, {"requirements": reqs, "installed": installed,
                            "build_s": round(time.monotonic() - started, 1), "built": time.time()})
        prune("site-", site)
    return site
