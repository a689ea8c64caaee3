"""What the control socket, the extensions and the health verdict may use of the running daemon.

A Protocol rather than `agent.daemon.Daemon` itself: control.py and extensions.py are imported by the daemon
(an import of it back would be a cycle), and a short list of what they touch is the contract a change to
daemon.py must keep. Tests can hand in any object that has these members.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .clock import Clock
    from .config import AgentConfig
    from .extensions import Extensions
    from .health import Onsets, Verdict
    from .pipeline import Pipeline
    from .probe import Probe
    from .spool import Spool
    from .uplink import Uplink


class DaemonView(Protocol):
    cfg: AgentConfig
    config_path: str | None
    clock: Clock
    pipeline: Pipeline
    uplink: Uplink
    spool: Spool
    probes: list[Probe]
    control: Extensions | None
    onsets: Onsets

    def status(self) -> dict[str, Any]: ...

    def healthy(self) -> bool: ...

    def verdict(self) -> Verdict: ...

    def history_error(self) -> str: ...

    def flush(self) -> None: ...
