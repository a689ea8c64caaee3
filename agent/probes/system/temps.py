"""Which temperature readings the system probe reports, found once in sysfs and then read by path.

No threads of its own: the system probe calls `discover()` at its first sample and again every
`REDISCOVER_S` (a hwmon driver loaded after the agent started shows up then).

Hand-written instead of psutil.sensors_temperatures() because of cost (issue 13: idle CPU): psutil globs
/sys/class/hwmon three ways and reads each sensor's `_input`, `_max`, `_crit`, `_label` and its chip's `name`
(or, with no hwmon, each thermal zone's trip points) on every call, every 10 s; ~100 µs warm on the 2-core build
machine with no sensor at all, and dozens of sysfs reads on an SoC with ten zones. The probe uses only the
current value, so after discovery a sample is one pread per sensor.

The names are psutil's, so `system.temp_c` keeps its `sensor` values across this change (docs/wire-format.md):
hwmon sensors `tempN` in /sys/class/hwmon/hwmon*/ and hwmon*/device/, sorted by path, grouped by their chip's
`name`, each named `chip.label`, or `chip.i` (its place in the chip's list) when it has no label; only when no
hwmon sensor exists, thermal zones, named `type.i`. Unlike psutil, a sensor that fails one read keeps its
index instead of renumbering the chip's later sensors. psutil's x86 `coretemp` platform path is not searched:
those sensors are in /sys/class/hwmon too.
"""

from __future__ import annotations

import os

REDISCOVER_S = 600.0


def _text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _hwmon(sys_root: str) -> tuple[list[tuple[str, str]], bool]:
    """(sensor base path, its chip's name) of every readable hwmon `tempN`, sorted by path; and whether any
    `tempN_*` file exists at all (psutil looks at thermal zones only when none does)."""
    bases: set[str] = set()
    top = f"{sys_root}/class/hwmon"
    for hw in _listdir(top):
        if not hw.startswith("hwmon"):
            continue
        for d in (f"{top}/{hw}", f"{top}/{hw}/device"):
            bases.update(f"{d}/{f.split('_', 1)[0]}" for f in _listdir(d) if f.startswith("temp") and "_" in f)
    out = []
    for base in sorted(bases):
        chip = _text(os.path.join(os.path.dirname(base), "name"))
        if chip is not None and os.path.exists(base + "_input"):
            out.append((base, chip))
    return out, bool(bases)


def discover(sys_root: str = "/sys") -> list[tuple[str, str]]:
    """[(sensor name, path of its reading in millidegrees)], sorted by chip as the probe reports them."""
    found, any_hwmon = _hwmon(sys_root)
    chips: dict[str, list[tuple[str, str]]] = {}
    if any_hwmon:
        for base, chip in found:
            chips.setdefault(chip, []).append((_text(base + "_label") or "", base + "_input"))
    else:
        zones = f"{sys_root}/class/thermal"
        for z in sorted(f"{zones}/{n}" for n in _listdir(zones) if n.startswith("thermal_zone")):
            kind = _text(f"{z}/type")
            if kind is not None:
                chips.setdefault(kind, []).append(("", f"{z}/temp"))
    return [(f"{chip}.{label or i}", path)
            for chip, entries in sorted(chips.items()) for i, (label, path) in enumerate(entries)]
