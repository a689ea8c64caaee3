"""Fetch Debian's stock kernel with `apt-get download` and keep only what the guest needs."""

from __future__ import annotations

import lzma
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import cache, hostdeps, modinfo
from .errors import VmError

# virtio + 9p carry the host root into the guest; the CAN family, netem and overlay are what tests use.
GUEST_MODULES = (
    "virtio_pci",
    "9pnet_virtio",
    "9p",
    "can",
    "can_raw",
    "can_bcm",
    "can_gw",
    "vcan",
    "sch_netem",
    "overlay",
)
# Loaded only when a run asks for them (run_in_vm(modules=...)): the KMS drivers behind qemu's
# bochs-display and virtio-gpu-pci, for the display tests (shared/notes/drm-rig.md).
ON_DEMAND_MODULES = ("bochs", "virtio_gpu")
META_PACKAGE = "linux-image-amd64"
LAYOUT = 3  # bump when the cached kernel directory layout changes
_XZ_MAGIC = b"\xfd7zXZ\x00"


@dataclass(frozen=True)
class Kernel:
    package: str
    version: str
    image: Path  # what qemu -kernel boots: the uncompressed ELF vmlinux when extractable, else vmlinuz
    modules: tuple[Path, ...]  # in load order
    on_demand: tuple[str, ...] = ()  # names among `modules` the guest loads only when a run asks
    deps: tuple[tuple[str, tuple[str, ...]], ...] = ()  # each on-demand module's direct dependencies

    def load_order(self, wanted: tuple[str, ...]) -> tuple[str, ...]:
        """The on-demand modules `wanted` needs, in load order (their dependency closure, as stamped)."""
        names = [modinfo.normalise(n) for n in wanted]
        unknown = [n for n in names if n not in self.on_demand]
        if unknown:
            raise VmError(f"not an on-demand guest module: {unknown} (known: {list(self.on_demand)})")
        deps = dict(self.deps)
        need: set[str] = set()
        todo = list(names)
        while todo:
            n = todo.pop()
            if n in self.on_demand and n not in need:
                need.add(n)
                todo += deps.get(n, ())
        return tuple(n for n in self.on_demand if n in need)

    @property
    def key(self) -> str:
        return cache.digest(self.package, self.version, *(p.name for p in self.modules))


def _apt_query(args: list[str]) -> str:
    proc = subprocess.run(["apt-cache", *args], capture_output=True, text=True, check=False)
    return proc.stdout if proc.returncode == 0 else ""


def _apt_lists_key() -> str:
    # apt-cache takes ~1 s here; its answer only changes when the package lists do.
    lists = Path("/var/lib/apt/lists")
    entries = sorted(f"{p.name}:{p.stat().st_mtime_ns}" for p in lists.glob("*Packages*")) if lists.is_dir() else []
    return cache.digest(os.environ.get("ICVQ_VM_KERNEL_PKG", ""), *entries)


def _query_package() -> tuple[str, str] | None:
    package = os.environ.get("ICVQ_VM_KERNEL_PKG", "")
    if not package:
        # The meta package pins the real image exactly: "Depends: linux-image-6.1.0-N-amd64 (= V)".
        for line in _apt_query(["show", "--no-all-versions", META_PACKAGE]).splitlines():
            if line.startswith("Depends:"):
                dep = line.split(":", 1)[1].split(",")[0].split()
                if len(dep) == 3 and dep[1] == "(=":
                    return dep[0], dep[2].rstrip(")")
        return None
    for line in _apt_query(["show", "--no-all-versions", package]).splitlines():
        if line.startswith("Version:"):
            return package, line.split(":", 1)[1].strip()
    return None


def _resolve_once() -> tuple[str, str] | None:
    memo = cache.cache_root() / "kernel-resolved.json"
    key = _apt_lists_key()
    stamp = cache.read_stamp(memo)
    if stamp and stamp.get("key") == key:
        return stamp["package"], stamp["version"]
    found = _query_package()
    if found:
        cache.write_stamp(memo, {"key": key, "package": found[0], "version": found[1]})
    return found


def resolve_package() -> tuple[str, str]:
    """(package, version) of the current bookworm kernel image, refreshing apt lists if needed."""
    found = _resolve_once()
    if found is None:
        hostdeps.apt_update()
        found = _resolve_once()
    if found is None:
        raise VmError(f"apt cannot resolve a kernel package via {META_PACKAGE}")
    return found


def _load(kdir: Path, wanted: tuple[str, ...]) -> Kernel | None:
    stamp = cache.read_stamp(kdir / "stamp.json")
    if not stamp or stamp.get("wanted") != list(wanted) or stamp.get("layout") != LAYOUT:
        return None
    mods = tuple(kdir / "modules" / f"{name}.ko" for name in stamp["order"])
    image = kdir / stamp["image"]
    if not image.is_file() or not all(m.is_file() for m in mods):
        return None
    on_demand = tuple(stamp.get("on_demand", ()))
    deps = tuple((n, tuple(d)) for n, d in stamp.get("deps", {}).items())
    return Kernel(stamp["package"], stamp["version"], image, mods, on_demand, deps)


def _cached_any(wanted: tuple[str, ...]) -> Kernel | None:
    kroot = cache.cache_root() / "kernel"
    dirs = sorted(kroot.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True) if kroot.is_dir() else []
    for kdir in dirs:
        found = _load(kdir, wanted)
        if found:
            return found
    return None


def ensure_kernel(wanted: tuple[str, ...] = GUEST_MODULES + ON_DEMAND_MODULES) -> Kernel:
    try:
        package, version = resolve_package()
    except VmError:
        # Offline reuse: a previously unpacked kernel is still a valid guest.
        fallback = _cached_any(wanted)
        if fallback:
            return fallback
        raise
    kdir = cache.cache_root() / "kernel" / f"{package}_{version}"
    with cache.locked("kernel"):
        found = _load(kdir, wanted)
        if found:
            return found
        _fetch(package, version, kdir, wanted)
        found = _load(kdir, wanted)
    if not found:
        raise VmError(f"kernel cache at {kdir} is incomplete after unpacking")
    return found


def _fetch(package: str, version: str, kdir: Path, wanted: tuple[str, ...]) -> None:
    shutil.rmtree(kdir, ignore_errors=True)
    (kdir / "modules").mkdir(parents=True)
    with tempfile.TemporaryDirectory(dir=cache.cache_root()) as tmp:
        # The sandbox user cannot write into root's cache; the download is verified by apt regardless.
        cmd = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", f"{package}={version}"]
        proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, check=False)
        debs = list(Path(tmp).glob("*.deb"))
        if proc.returncode != 0 or not debs:
            raise VmError(f"apt-get download {package} failed:\n{proc.stderr[-2000:]}")
        tree = Path(tmp) / "x"
        proc = subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(tree)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise VmError(f"dpkg-deb -x failed:\n{proc.stderr[-2000:]}")
        images = sorted((tree / "boot").glob("vmlinuz-*"))
        releases = sorted((tree / "lib" / "modules").iterdir())
        if not images or not releases:
            raise VmError(f"{package} has no vmlinuz or modules")
        # qemu boots an ELF kernel only through the PVH entry point.
        pvh = any("CONFIG_PVH=y" in c.read_text() for c in (tree / "boot").glob("config-*"))
        image = "vmlinux" if pvh and _extract_vmlinux(images[0], kdir / "vmlinux") else "vmlinuz"
        if image == "vmlinuz":
            shutil.copy2(images[0], kdir / "vmlinuz")
        index = modinfo.index_modules(releases[0] / "kernel")
        order = modinfo.load_order(wanted, index)
        base = modinfo.load_order([w for w in wanted if w not in ON_DEMAND_MODULES], index)
        on_demand = [n for n in order if n not in base]
        deps = {n: modinfo.depends(index[n]) for n in on_demand}
        for name in order:
            shutil.copy2(index[name], kdir / "modules" / f"{name}.ko")
    cache.write_stamp(
        kdir / "stamp.json",
        {
            "layout": LAYOUT,
            "package": package,
            "version": version,
            "release": releases[0].name,
            "wanted": list(wanted),
            "order": order,
            "on_demand": on_demand,
            "deps": deps,
            "image": image,
        },
    )


def _extract_vmlinux(bzimage: Path, target: Path) -> bool:
    """Unpack the ELF kernel from an xz bzImage so qemu can boot it without decompression.

    Under TCG the kernel's own xz decompressor takes ~3 s of every boot, half the total.
    """
    data = bzimage.read_bytes()
    start = data.find(_XZ_MAGIC)
    if start < 0:
        return False
    try:
        elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[start:])
    except lzma.LZMAError:
        return False
    if elf[:4] != b"\x7fELF":
        return False
    target.write_bytes(elf)
    return True
