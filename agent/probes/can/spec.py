"""Resolved, ready-to-run descriptions of what to watch: config + DBC → plain values the hot path reads."""

from __future__ import annotations

from ...dataclass_shared import dataclass
from .e2e import E2ESpec
from .fields import BitField
from .rules import Condition

CAN_EFF_FLAG = 0x80000000


@dataclass(frozen=True)
class StatusSpec:
    name: str
    signal: str
    field: BitField
    condition: Condition
    vss: str = ""
    debounce: int = 1
    cause: str = ""  # e.g. "blockage": an environmental cause, so the backend does not blame the part


@dataclass(frozen=True)
class SensorSpec:
    name: str
    bus: str
    can_id: int
    extended: bool
    cycle_s: float
    timeout_s: float
    mode: str = "raw"
    message: str = ""
    length: int = 0  # expected payload length; 0 = any length that holds the fields
    min_length: int = 0
    counter: BitField | None = None
    counter_modulo: int = 0
    e2e: E2ESpec | None = None
    status: tuple[StatusSpec, ...] = ()

    @property
    def key(self) -> int:
        """The id as the kernel reports it in can_id (EFF flag for 29-bit ids): the dispatch key."""
        return self.can_id | CAN_EFF_FLAG if self.extended else self.can_id

    @property
    def id_text(self) -> str:
        return f"0x{self.can_id:08X}" if self.extended else f"0x{self.can_id:03X}"
