"""`[probes.link]`: every source is optional; an empty value (or "none") switches that source off.

config/probes/link.toml documents every key with its unit and default; docs/link.md says why the defaults are
what they are and which evidence each cause needs.
"""

from __future__ import annotations

from ...dataclass_shared import dataclass
from ...errors import ConfigError
from ...schema import opt
from .privacy import DEFAULT_GRID_M, Place


def split_host_port(text: str, default_port: int) -> tuple[str, int]:
    """"host:port", "host" or "[v6]:port" → (host, port); raises ValueError."""
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("unclosed '['")
        host, rest = text[1:end], text[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError("expected ':port' after ']'")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = int(p)
    if not host or not 0 < port < 65536:
        raise ValueError("expected host:port")
    return host, port


def gpsd_address(url: str) -> tuple[str, int]:
    if not url.startswith("gpsd://"):
        raise ValueError("expected gpsd://host[:port]")
    return split_host_port(url[len("gpsd://"):].rstrip("/"), 2947)


@dataclass(frozen=True)
class IfaceConfig:
    # The uplink's network interface ("" = none). Informational: its state and counters become metrics and
    # episode evidence; the data path itself is judged from the uplink.
    name: str = "wwan0"


@dataclass(frozen=True)
class ModemConfig:
    # "mmcli" (ModemManager), "at:/dev/ttyUSB2" (an AT port, exclusively ours) or "none".
    source: str = "mmcli"
    mmcli: str = "mmcli"
    modem: str = "any"
    # While healthy the poll only bounds how late a loss is seen (its start is back-dated to the reading, see
    # classify.loss_start). During an episode we poll faster: the recovery figures are only as precise as this.
    interval_s: float = opt(5.0, min=0.01, max=3600.0)
    episode_interval_s: float = opt(1.0, min=0.01, max=3600.0)
    timeout_s: float = opt(3.0, min=0.05, max=60.0)
    baud: int = opt(115200, choices=(9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600))
    # mmcli --signal-setup rate (s); extended signal values stay empty until it is set. 0 = leave as is.
    signal_refresh_s: int = opt(5, min=0, max=3600)

    @property
    def kind(self) -> str:
        return "at" if self.source.startswith("at:") else self.source

    @property
    def at_path(self) -> str:
        return self.source[3:] if self.kind == "at" else ""

    def validate(self) -> None:
        if self.kind not in ("mmcli", "at", "none"):
            raise ConfigError('must be "mmcli", "at:/dev/<port>" or "none"', key="source")
        if self.kind == "at" and not self.at_path.startswith("/"):
            raise ConfigError("the AT port must be an absolute path, e.g. at:/dev/ttyUSB2", key="source")
        if self.kind == "mmcli" and not self.mmcli:
            raise ConfigError("must not be empty", key="mmcli")


@dataclass(frozen=True)
class GnssConfig:
    # gpsd's JSON protocol, "gpsd://host:port" ("" = no GNSS).
    url: str = "gpsd://127.0.0.1:2947"
    # gpsd reports at 1 Hz; three missed reports mean the receiver went quiet, which counts as no fix.
    stale_s: float = opt(3.0, min=0.05, max=3600.0)
    reconnect_s: float = opt(5.0, min=0.05, max=3600.0)
    connect_timeout_s: float = opt(2.0, min=0.05, max=60.0)

    def validate(self) -> None:
        if self.url:
            try:
                gpsd_address(self.url)
            except ValueError as e:
                raise ConfigError(f"{e}, got {self.url!r}", key="url") from None


@dataclass(frozen=True)
class DatapathConfig:
    # The MQTT session of the agent's own uplink is the data path that matters: it is what must come back.
    uplink: bool = True
    # Optional TCP connect probe "host:port" ("" = off): round-trip time and a second opinion on reachability.
    tcp_target: str = ""
    tcp_interval_s: float = opt(10.0, min=0.01, max=3600.0)
    tcp_episode_interval_s: float = opt(2.0, min=0.01, max=3600.0)
    tcp_timeout_s: float = opt(3.0, min=0.01, max=60.0)

    def validate(self) -> None:
        if self.tcp_target:
            try:
                split_host_port(self.tcp_target, 0)
            except ValueError as e:
                raise ConfigError(f"{e}, got {self.tcp_target!r}", key="tcp_target") from None


@dataclass(frozen=True)
class RulesConfig:
    """Thresholds of the pure classifier (classify.py). docs/link.md gives the reasons for each default."""

    # Shorter outages are counted as blips, not episodes (one odd reading, e.g. "searching" in a reselection).
    loss_min_s: float = opt(3.0, min=0.0, max=3600.0)
    # Below these the signal is not usable: cells are selectable above q-RxLevMin, commonly -124…-128 dBm RSRP
    # (TS 36.304); CSQ ≤ 4 (-105 dBm, TS 27.007).
    usable_rsrp_dbm: float = opt(-120.0, min=-160.0, max=-40.0)
    usable_rssi_dbm: float = opt(-105.0, min=-130.0, max=-20.0)
    # "Weak" before a coverage hole: RSRP below -110 dBm (Android's "moderate" bar ends at -108); CSQ ≤ 9.
    weak_rsrp_dbm: float = opt(-110.0, min=-160.0, max=-40.0)
    weak_rssi_dbm: float = opt(-95.0, min=-130.0, max=-20.0)
    # A decay is a drop of at least this much inside the trend window.
    decay_db: float = opt(10.0, min=0.0, max=100.0)
    trend_window_s: float = opt(60.0, min=0.0, max=3600.0)
    # Tunnel: GNSS and cellular go (and come back) within this of each other (10 s ≈ 280 m at 100 km/h).
    together_s: float = opt(10.0, min=0.0, max=600.0)
    moving_min_kmh: float = opt(10.0, min=0.0, max=500.0)
    # Coverage hole: GNSS kept a fix in at least this share of the episode's samples.
    gnss_keep_ratio: float = opt(0.9, min=0.0, max=1.0)
    # Terminal: a healthy modem is registered and attached within one failed attempt and one retry of the
    # signal being usable: guard T3410 (15 s) + retry wait T3411 (10 s) on LTE (T3510 + T3511 on 5G, the
    # same), T3310 + T3311 (15 + 15 s) on GPRS, plus the attempt that succeeds (a few s) = 35 s
    # (3GPP TS 24.301 Table 10.2.1, TS 24.501 Table 10.2.1, TS 24.008 Table 11.3a; docs/link.md).
    defect_after_s: float = opt(35.0, min=0.0, max=86400.0)
    # The data path gets longer: a PDN connection may take 5 x T3482 (8 s) = 40 s, then the uplink's own
    # reconnect back-off (uplink.backoff_max_s, 120 s) plus DNS/TLS: 180 s.
    datapath_defect_after_s: float = opt(180.0, min=0.0, max=86400.0)
    # After the data path is back, wait this long for the first acknowledged publish before closing without it.
    ack_wait_s: float = opt(30.0, min=0.0, max=3600.0)


@dataclass(frozen=True)
class Config:
    enabled: bool = False
    # The detector tick: one sample of every source's latest state. Recovery figures have this resolution.
    interval_s: float = opt(1.0, min=0.01, max=60.0)
    metrics_interval_s: float = opt(30.0, min=0.05, max=86400.0)
    # Positions go only into link.loss BEGIN/END (never a track), snapped to a grid of this many metres (the
    # point sent is ≤ grid x 0.71 from the fix: 354 m at 500 m): which tunnel, not which house (privacy.py).
    position_grid_m: float = opt(DEFAULT_GRID_M, min=10.0, max=100_000.0)
    # false: no position, altitude or speed at all (entry{}/exit{} stay empty); causes are still classified
    # in the car from the full-precision fix.
    send_position: bool = True
    # Samples kept per episode (run-length compressed): a flapping link cannot grow memory without bound;
    # past it the first samples stay and only the newest is updated (counted as timeline_full).
    max_timeline: int = opt(5000, min=100, max=1_000_000)
    iface: IfaceConfig = opt(factory=IfaceConfig)
    modem: ModemConfig = opt(factory=ModemConfig)
    gnss: GnssConfig = opt(factory=GnssConfig)
    datapath: DatapathConfig = opt(factory=DatapathConfig)
    rules: RulesConfig = opt(factory=RulesConfig)

    @property
    def place(self) -> Place:
        return Place(self.position_grid_m, self.send_position)
