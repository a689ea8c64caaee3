"""Build the busybox initramfs (static busybox, the guest /init, the kernel modules)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import cache
from .errors import VmError
from .kernel import Kernel

BUSYBOX = Path("/bin/busybox")
INIT_SCRIPT = Path(__file__).with_name("guest_init.sh")
FORMAT_VERSION = "1"  # bump when the layout below changes


def ensure_initramfs(kernel: Kernel) -> Path:
    if not BUSYBOX.is_file():
        raise VmError(f"{BUSYBOX} missing: install busybox-static (python -m tools.vm prepare)")
    key = cache.digest(FORMAT_VERSION, kernel.key, cache.file_digest(BUSYBOX), INIT_SCRIPT.read_bytes())
    target = cache.cache_root() / "initramfs" / f"initramfs-{key}.cpio"
    if target.is_file():
        return target
    with cache.locked("initramfs"):
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            for stale in target.parent.glob("initramfs-*.cpio"):
                stale.unlink()
            _build(kernel, target)
    return target


def _build(kernel: Kernel, target: Path) -> None:
    if os.geteuid() != 0:
        raise VmError("building the initramfs needs root (it creates /dev/console with mknod)")
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        root = Path(tmp) / "root"
        for sub in ("bin", "dev", "lib/modules"):
            (root / sub).mkdir(parents=True)
        shutil.copy2(BUSYBOX, root / "bin" / "busybox")
        shutil.copy2(INIT_SCRIPT, root / "init")
        (root / "init").chmod(0o755)
        # The kernel opens /dev/console before /init runs; without the node, init has no stdio.
        os.mknod(root / "dev" / "console", 0o600 | 0o020000, os.makedev(5, 1))
        for ko in kernel.modules:
            shutil.copy2(ko, root / "lib" / "modules" / ko.name)
        # On-demand modules are copied but loaded by /init only when config.sh names them (ICVQ_MODULES).
        (root / "modules.order").write_text("".join(f"{ko.stem}\n" for ko in kernel.modules
                                                    if ko.stem not in kernel.on_demand))
        names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
        partial = target.with_suffix(".partial")
        with partial.open("wb") as out:
            proc = subprocess.run(
                ["cpio", "--quiet", "-o", "-H", "newc", "--reproducible"],
                input="\n".join(names) + "\n",
                cwd=root,
                stdout=out,
                stderr=subprocess.PIPE,
                text=True,
                check=False,
            )
        if proc.returncode != 0:
            raise VmError(f"cpio failed: {proc.stderr}")
        partial.replace(target)
