"""Disabled probes cost nothing at run time (issue 13): their config is validated, then their modules released.

Unknown keys in `[probes.display]` must stop the daemon even when the probe is off, so its `Config` class is
imported to check the table. The running daemon (`load(..., lean=True)`) then keeps only a `DisabledProbe`
— the table's plain values, for the config digest and `icvq status` — and drops the probe package from
`sys.modules`, so nothing of it stays loaded: the settings modules of display, link and CAN were ≈ 1 MiB of
RSS, and the display package imported whole (with its sources) ≈ 3 MiB before build() imported it lazily.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from .config import release
from .schema import to_plain


class DisabledProbe(Mapping[str, Any]):
    """What stays of a disabled probe's config: its plain values (same digest as the full Config)."""

    enabled = False

    def __init__(self, cfg: Any) -> None:
        self._plain: dict[str, Any] = to_plain(cfg)
        self._redacted: dict[str, Any] = to_plain(cfg, redact=True)

    def __getitem__(self, key: str) -> Any:
        return self._plain[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._plain)

    def __len__(self) -> int:
        return len(self._plain)

    def plain(self, *, redact: bool = False) -> dict[str, Any]:
        return self._redacted if redact else self._plain


def unload(name: str, loaded_before: set[str]) -> None:
    """Unload the modules of probe `name` that reading its config loaded (only those: a module someone
    imported before, e.g. a test, stays), then collect them. The caller must hold no reference to the probe's
    full Config any more: a Config still referenced keeps its class, and so its module's functions and dict,
    alive through the collection; they then wait as garbage for the next full collection, which an idle daemon
    may not run for hours (issue 13: ≈ 250 KiB of the display, link and CAN settings were held at idle)."""
    release((f"agent.probes.{name}",), keep=loaded_before)
