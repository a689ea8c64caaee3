"""Install the Debian packages the harness needs on the host (CI starts from a fresh machine)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence

from .errors import VmError

# qemu and busybox-static build and boot the guest; can-utils (cangen, candump, canplayer) and cpio
# are tools guest-side tests and debugging rely on, so they are provisioned alongside.
HOST_PACKAGES = ("qemu-system-x86", "busybox-static", "cpio", "can-utils")

_apt_updated = False


def missing_packages(packages: Sequence[str] = HOST_PACKAGES) -> list[str]:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Package} ${db:Status-Status}\n", *packages],
        capture_output=True,
        text=True,
        check=False,
    )
    installed = {line.split()[0] for line in proc.stdout.splitlines() if line.endswith(" installed")}
    return [p for p in packages if p not in installed]


def apt_update() -> None:
    global _apt_updated
    if _apt_updated:
        return
    _run(["apt-get", "update", "-q"])
    _apt_updated = True


def ensure_packages(packages: Sequence[str] = HOST_PACKAGES) -> None:
    missing = missing_packages(packages)
    if not missing:
        return
    if os.geteuid() != 0:
        raise VmError(f"host packages missing and not root to install them: {' '.join(missing)}")
    apt_update()
    _run(["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing])
    still = missing_packages(packages)
    if still:
        raise VmError(f"apt-get could not install: {' '.join(still)}")


def _run(cmd: list[str]) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise VmError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
