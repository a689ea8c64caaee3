"""Read kernel-module dependencies straight from the .ko files.

The Debian kernel package ships no modules.dep (depmod runs at install time) and the
host may lack kmod's `modinfo`, so the `.modinfo` ELF section is parsed directly.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

from .errors import VmError


def _modinfo_section(data: bytes) -> bytes:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise VmError("not a 64-bit little-endian ELF module")
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)

    def header(i: int) -> tuple[int, int, int]:
        name, _type, _flags, _addr, offset, size = struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
        return name, offset, size

    _, str_off, _ = header(shstrndx)
    for i in range(shnum):
        name_off, offset, size = header(i)
        end = data.index(b"\0", str_off + name_off)
        if data[str_off + name_off : end] == b".modinfo":
            return data[offset : offset + size]
    return b""


def depends(ko: Path) -> list[str]:
    """Module names (underscore form) that `ko` needs loaded first."""
    for entry in _modinfo_section(ko.read_bytes()).split(b"\0"):
        if entry.startswith(b"depends="):
            value = entry[len(b"depends=") :].decode()
            return [normalise(d) for d in value.split(",") if d]
    return []


def normalise(name: str) -> str:
    return name.replace("-", "_")


def index_modules(modules_dir: Path) -> dict[str, Path]:
    return {normalise(p.name[: -len(".ko")]): p for p in modules_dir.rglob("*.ko")}


def load_order(wanted: Iterable[str], index: dict[str, Path]) -> list[str]:
    """Dependency closure of `wanted`, ordered so every module follows its dependencies."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in order:
            return
        if name in visiting:
            raise VmError(f"module dependency cycle at {name}")
        if name not in index:
            raise VmError(f"kernel module {name} not found in the kernel package")
        visiting.add(name)
        for dep in depends(index[name]):
            visit(dep)
        visiting.discard(name)
        order.append(name)

    for name in wanted:
        visit(normalise(name))
    return order
