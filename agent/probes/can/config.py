"""`[probes.can]`: buses, sensors and what to check on each; config/probes/can.toml documents every key.

Only structure is checked here. Whatever needs the DBC (message and signal names, cycle times, value names
in conditions) is resolved by dbc.resolve() when the probe is built, so errors still name the key path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...dataclass_shared import dataclass
from ...errors import ConfigError
from ...schema import opt
from .e2e import P01_MODES, PROFILES

# socketcan uses kernel sockets directly (raw + BCM); the others go through python-can, for demos and tests:
# `virtual` is one process only, `udp_multicast` crosses processes on one machine.
INTERFACES = ("socketcan", "virtual", "udp_multicast")
BYTE_ORDERS = ("little_endian", "big_endian")
MODES = ("raw", "bcm")
CAN_SFF_MAX = 0x7FF
CAN_EFF_MAX = 0x1FFFFFFF


@dataclass(frozen=True)
class BusConfig:
    name: str = opt()
    interface: str = opt("socketcan", choices=INTERFACES)
    channel: str = ""
    bitrate: int = opt(500_000, min=10_000, max=8_000_000)
    fd: bool = False
    dbc: str = ""
    error_frames: bool = True
    options: Mapping[str, Any] = opt(factory=dict)

    @property
    def ifname(self) -> str:
        return self.channel or self.name

    def validate(self) -> None:
        if not self.name or any(c.isspace() for c in self.name):
            raise ConfigError("must be non-empty without spaces", key="name")
        if self.options and self.interface == "socketcan":
            raise ConfigError("options are python-can arguments; socketcan buses take none", key="options")
        reserved = {"interface", "channel", "receive_own_messages", "can_filters"} & set(self.options)
        if reserved:
            raise ConfigError(f"{sorted(reserved)[0]} is set by the probe, not in options", key="options")


def _check_field(obj: Any, what: str) -> None:
    by_name = bool(obj.signal)
    by_bits = obj.start_bit >= 0 or obj.length > 0
    if by_name and by_bits:
        raise ConfigError(f"give the {what} either as signal or as start_bit/length, not both", key="signal")
    if not by_name and not (obj.start_bit >= 0 and obj.length > 0):
        raise ConfigError(f"the {what} needs signal (with a DBC) or start_bit and length", key="start_bit")


@dataclass(frozen=True)
class CounterConfig:
    signal: str = ""
    start_bit: int = opt(-1, min=-1, max=511)
    length: int = opt(0, min=0, max=16)
    byte_order: str = opt("little_endian", choices=BYTE_ORDERS)
    modulo: int = opt(0, min=0, max=65536)

    @property
    def enabled(self) -> bool:
        return bool(self.signal) or self.start_bit >= 0 or self.length > 0

    def validate(self) -> None:
        if self.enabled:
            _check_field(self, "counter")


@dataclass(frozen=True)
class E2EConfig:
    profile: str = opt("", choices=("", *PROFILES))
    data_id: int = opt(0, min=0, max=0xFFFF)
    data_id_list: tuple[int, ...] = ()
    data_id_mode: str = opt("both", choices=P01_MODES)
    offset_bits: int = opt(0, min=0, max=496)
    length: int = opt(0, min=0, max=64)

    @property
    def enabled(self) -> bool:
        return bool(self.profile)

    def validate(self) -> None:
        if not self.enabled:
            return
        if self.offset_bits % 8:
            raise ConfigError("must be a multiple of 8", key="offset_bits")
        if self.profile == "P02":
            if self.offset_bits:
                raise ConfigError("P02 has a fixed layout (CRC in byte 0)", key="offset_bits")
            if self.data_id_list and (len(self.data_id_list) != 16 or
                                      any(not 0 <= d <= 255 for d in self.data_id_list)):
                raise ConfigError("P02 takes 16 data ids of 0..255", key="data_id_list")
        elif self.data_id_list:
            raise ConfigError("only P02 uses a data id list", key="data_id_list")
        if self.profile != "P01" and self.data_id_mode != "both":
            raise ConfigError("only P01 has data id modes", key="data_id_mode")


@dataclass(frozen=True)
class StatusConfig:
    signal: str = ""
    start_bit: int = opt(-1, min=-1, max=511)
    length: int = opt(0, min=0, max=64)
    byte_order: str = opt("little_endian", choices=BYTE_ORDERS)
    signed: bool = False
    fault_when: str = "!= 0"
    name: str = ""
    vss: str = ""
    cause: str = ""
    debounce: int = opt(1, min=1, max=1000)

    def validate(self) -> None:
        _check_field(self, "status signal")

    @property
    def label(self) -> str:
        return self.name or self.signal or f"bits{self.start_bit}+{self.length}"


@dataclass(frozen=True)
class SensorConfig:
    name: str = opt()
    bus: str = opt()
    message: str = ""
    id: int = opt(-1, min=-1, max=CAN_EFF_MAX)
    extended: bool = False
    cycle_ms: float = opt(0.0, min=0.0, max=3_600_000.0)
    timeout_factor: float = opt(10.0, min=1.0, max=10_000.0)
    timeout_ms: float = opt(0.0, min=0.0, max=3_600_000.0)
    length: int = opt(0, min=0, max=64)
    mode: str = opt("raw", choices=MODES)
    # Nested tables, absent = off. (Not `X | None`: the schema would then report a generic type error
    # instead of the nested key that is wrong.)
    counter: CounterConfig = opt(factory=CounterConfig)
    e2e: E2EConfig = opt(factory=E2EConfig)
    status: tuple[StatusConfig, ...] = ()

    def validate(self) -> None:
        if not self.name:
            raise ConfigError("must be non-empty", key="name")
        if not self.message and self.id < 0:
            raise ConfigError("give the message by DBC name (message) or by id", key="message")
        if self.id >= 0 and not self.extended and self.id > CAN_SFF_MAX:
            raise ConfigError("above 0x7FF: set extended = true for a 29-bit id", key="id")
        if self.mode == "bcm" and (self.counter.enabled or self.e2e.enabled):
            # BCM only wakes us when masked content changes: an alive counter changes in every frame.
            raise ConfigError("counter and E2E checks need every frame: use mode = \"raw\"", key="mode")
        names = [s.label for s in self.status]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError(f"duplicate status name {sorted(dup)[0]!r}", key="status")


@dataclass(frozen=True)
class Config:
    enabled: bool = False
    allow_transmit: bool = False
    interval_s: float = opt(10.0, min=0.2, max=3600.0)
    read_interval_ms: float = opt(200.0, min=0.0, max=1000.0)
    link_poll_s: float = opt(10.0, min=1.0, max=3600.0)
    max_examples: int = opt(3, min=0, max=20)
    bus: tuple[BusConfig, ...] = ()
    sensor: tuple[SensorConfig, ...] = ()

    def validate(self) -> None:
        seen: set[str] = set()
        channels: set[tuple[str, str]] = set()
        for i, b in enumerate(self.bus):
            if b.name in seen:
                raise ConfigError(f"duplicate bus name {b.name!r}", key=f"bus[{i}].name")
            if (b.interface, b.ifname) in channels:
                raise ConfigError(f"channel {b.ifname!r} is already monitored by another bus",
                                  key=f"bus[{i}].channel")
            seen.add(b.name)
            channels.add((b.interface, b.ifname))
        if self.enabled and not self.bus:
            raise ConfigError("enabled without any [[probes.can.bus]]", key="bus")
        fd = {b.name: b.fd for b in self.bus}
        names: set[str] = set()
        for i, s in enumerate(self.sensor):
            if s.bus not in seen:
                raise ConfigError(f"unknown bus {s.bus!r} (buses: {', '.join(sorted(seen)) or 'none'})",
                                  key=f"sensor[{i}].bus")
            if s.name in names:
                raise ConfigError(f"duplicate sensor name {s.name!r}", key=f"sensor[{i}].name")
            if s.mode == "bcm" and fd[s.bus]:
                raise ConfigError("mode = \"bcm\" supports classic CAN buses only", key=f"sensor[{i}].mode")
            names.add(s.name)
