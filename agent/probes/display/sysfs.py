"""Backlight and DRM connector state from sysfs (the root is configurable so tests use a fake tree).

- `class/backlight/<dev>/{bl_power,brightness,actual_brightness,max_brightness}`: bl_power 0 = FB_BLANK_UNBLANK
  (on), 4 = FB_BLANK_POWERDOWN.
- `class/drm/card<N>-<connector>/{status,enabled,dpms}`: "connected", "enabled", "On".
"""

from __future__ import annotations

import fnmatch
import os

from ...dataclass_shared import dataclass

FB_BLANK_UNBLANK = 0


@dataclass(frozen=True)
class BacklightReading:
    device: str
    bl_power: int | None
    brightness: int | None
    actual_brightness: int | None
    max_brightness: int | None

    @property
    def state(self) -> str:
        """on, off (switched off or dimmed to zero) or fault (commanded on, the hardware reports zero)."""
        if self.bl_power is not None and self.bl_power != FB_BLANK_UNBLANK:
            return "off"
        if self.brightness == 0:
            return "off"
        if self.actual_brightness == 0 and (self.brightness or 0) > 0:
            return "fault"
        return "on"

    def fields(self) -> dict[str, object]:
        return {"device": self.device, "bl_power": self.bl_power, "brightness": self.brightness,
                "actual_brightness": self.actual_brightness, "max_brightness": self.max_brightness}


@dataclass(frozen=True)
class ConnectorReading:
    name: str
    status: str
    enabled: str
    dpms: str

    @property
    def ok(self) -> bool:
        # A missing attribute ("") is not evidence either way.
        return (self.status in ("connected", "")) and self.enabled in ("enabled", "") and self.dpms in ("On", "")

    def fields(self) -> dict[str, object]:
        return {"connector": self.name, "status": self.status, "enabled": self.enabled, "dpms": self.dpms}


class SysfsReader:
    def __init__(self, root: str, backlight: str = "*", connector: str = "*") -> None:
        self.root = root
        self.backlight = backlight
        self.connector = connector
        self.malformed = 0

    def _text(self, path: str) -> str | None:
        try:
            with open(path, "rb") as f:
                return f.read(256).decode("ascii", "replace").strip()
        except OSError:
            return None

    def _int(self, path: str) -> int | None:
        t = self._text(path)
        if t is None:
            return None
        try:
            return int(t)
        except ValueError:
            self.malformed += 1
            return None

    def _list(self, sub: str, pattern: str, must_have_dash: bool = False) -> list[tuple[str, str]]:
        base = os.path.join(self.root, sub)
        try:
            names = sorted(os.listdir(base))
        except OSError:
            return []
        return [(n, os.path.join(base, n)) for n in names
                if fnmatch.fnmatchcase(n, pattern) and (not must_have_dash or ("-" in n and n.startswith("card")))]

    def backlights(self) -> list[BacklightReading]:
        if not self.backlight:
            return []
        return [BacklightReading(name, self._int(f"{d}/bl_power"), self._int(f"{d}/brightness"),
                                 self._int(f"{d}/actual_brightness"), self._int(f"{d}/max_brightness"))
                for name, d in self._list("class/backlight", self.backlight)]

    def connectors(self) -> list[ConnectorReading]:
        if not self.connector:
            return []
        # card0, renderD128 and version live beside the connectors; only card<N>-<name> are connectors.
        return [ConnectorReading(name, self._text(f"{d}/status") or "", self._text(f"{d}/enabled") or "",
                                 self._text(f"{d}/dpms") or "")
                for name, d in self._list("class/drm", self.connector, must_have_dash=True)]
