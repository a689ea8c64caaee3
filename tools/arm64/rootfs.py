"""A Debian bookworm arm64 userland (Python 3.11 + msgpack + psutil) for qemu-aarch64-static, built and cached.

`debootstrap --foreign` downloads and verifies (Release signature, package hashes) every package, then we
unpack all of them with `dpkg-deb -x`; nothing is configured and no maintainer script runs (they would be
arm64 binaries). That is enough for `qemu-aarch64-static -L ROOT ROOT/usr/bin/python3.11`: the dynamic
loader, libc, libpython and the compiled modules are files in the right places.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from .cache import ArmError, cache_root, digest, locked, prune, read_stamp, write_stamp

SUITE = "bookworm"
# Python with the C-extension dependencies of the agent from Debian; the pure-Python ones (paho-mqtt >= 2.1,
# python-can) come as wheels (wheels.py): Debian bookworm's python3-paho-mqtt is 1.6, too old.
INCLUDE = ("python3", "python3-msgpack", "python3-psutil")
PYTHON = "usr/bin/python3.11"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
# Bump when the way the tree is made changes, so old caches are not reused.
LAYOUT = "2"
# Mount points of a real system. qemu-user's -L prefers ROOT/<path> whenever that exists, so these empty
# directories would hide the host's: psutil.pids() saw no process at all through an empty ROOT/proc.
HOST_DIRS = ("proc", "sys", "dev", "run", "tmp")


def apt_mirror(suite: str = SUITE) -> str:
    """The Debian mirror apt uses on this host for `suite` ($ICVQ_ARM64_MIRROR overrides)."""
    env = os.environ.get("ICVQ_ARM64_MIRROR")
    if env:
        return env.rstrip("/")
    sources = Path("/etc/apt/sources.list.d")
    for path in sorted(sources.glob("*.sources")) if sources.is_dir() else []:
        for stanza in re.split(r"\n\s*\n", path.read_text(errors="replace")):
            fields = dict(
                (k.strip().lower(), v.strip())
                for k, _, v in (line.partition(":") for line in stanza.splitlines() if not line.startswith("#"))
                if v
            )
            if "deb" in fields.get("types", "").split() and suite in fields.get("suites", "").split():
                return fields.get("uris", "").split()[0].rstrip("/")
    for path in [Path("/etc/apt/sources.list"), *sorted(sources.glob("*.list"))]:
        if not path.is_file():
            continue
        for line in path.read_text(errors="replace").splitlines():
            words = re.sub(r"\[[^]]*\]", "", line).split()  # drop [arch=... signed-by=...]
            if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
                return words[1].rstrip("/")
    return DEFAULT_MIRROR


def _run(cmd: list[str], what: str, timeout: float = 900) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ArmError(f"{cmd[0]} not found: run `make deps` (tools/deps/apt-arm64.txt)") from None
    if proc.returncode != 0:
        raise ArmError(f"{what} failed ({proc.returncode}): {' '.join(cmd)}\n"
                       f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc.stdout


def rootfs_dir() -> Path:
    return cache_root() / f"rootfs-{SUITE}-{digest(LAYOUT, SUITE, *INCLUDE)}"


def ensure_rootfs(log: bool = True) -> Path:
    """The cached arm64 root (built on first use, ~20-40 s, ~200 MB)."""
    root = rootfs_dir()
    stamp = root.with_name(root.name + ".json")
    if read_stamp(stamp) is not None and (root / PYTHON).is_file():
        return root
    if os.geteuid() != 0:
        raise ArmError("building the arm64 root needs root (debootstrap creates device nodes and owners)")
    if shutil.which("debootstrap") is None:
        raise ArmError("debootstrap not found: run `make deps` (tools/deps/apt-arm64.txt)")
    with locked("rootfs"):
        if read_stamp(stamp) is not None and (root / PYTHON).is_file():
            return root
        mirror = apt_mirror()
        started = time.monotonic()
        if log:
            print(f"arm64: debootstrap --foreign {SUITE} arm64 from {mirror} (once, cached in {root})", flush=True)
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = ["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase", f"--include={','.join(INCLUDE)}"]
        if KEYRING.is_file():
            cmd.append(f"--keyring={KEYRING}")
        _run([*cmd, SUITE, str(tmp), mirror], "debootstrap")
        debs = sorted((tmp / "var" / "cache" / "apt" / "archives").glob("*.deb"))
        if not debs:
            raise ArmError(f"debootstrap left no packages in {tmp}/var/cache/apt/archives")
        for deb in debs:
            _run(["dpkg-deb", "-x", str(deb), str(tmp)], f"unpacking {deb.name}")
        if not (tmp / PYTHON).is_file():
            raise ArmError(f"{PYTHON} missing after unpacking {len(debs)} packages")
        for name in HOST_DIRS:
            path = tmp / name
            if path.is_symlink() or path.is_file():
                path.unlink()
            else:
                shutil.rmtree(path, ignore_errors=True)
        packages = [deb.name.split("_")[0] + " " + deb.name.split("_")[1] for deb in debs]
        for deb in debs:  # the .debs are not needed once unpacked (~60 MB)
            deb.unlink()
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
        write_stamp(stamp, {"suite": SUITE, "mirror": mirror, "include": list(INCLUDE), "packages": packages,
                            "build_s": round(time.monotonic() - started, 1), "built": time.time()})
        prune("rootfs-", root)
        if log:
            print(f"arm64: root ready in {time.monotonic() - started:.0f} s ({len(debs)} packages)", flush=True)
    return root
