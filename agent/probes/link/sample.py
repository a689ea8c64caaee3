"""The plain values that flow from the sources to the detector: one reading per source, one Sample per tick.

`None` always means "no information" (source off, unreadable, not answered yet) and never "bad": rules must
not turn a missing source into a loss.
"""

from __future__ import annotations

from ...dataclass_shared import dataclass


@dataclass(frozen=True, slots=True)
class ModemReading:
    """What the modem said in one poll. `signal_known` is True when a signal query was answered (even with
    "no signal"), so `rsrp is None and signal_known` means the radio hears nothing."""

    signal_known: bool = False
    rsrp: float | None = None       # LTE RSRP, dBm
    rsrq: float | None = None       # LTE RSRQ, dB
    rssi: float | None = None       # dBm (CSQ, or LTE RSSI)
    snr: float | None = None        # LTE SNR/SINR, dB
    nr_rsrp: float | None = None    # 5G NR (SS-)RSRP, dBm
    nr_rsrq: float | None = None
    nr_snr: float | None = None
    tech: str | None = None         # "lte", "5gnr", "umts", "gsm", ...
    reg: str | None = None          # "home", "roaming", "searching", "idle", "denied", "unknown", ...
    registered: bool | None = None
    attached: bool | None = None    # packet service attached (data bearer possible)
    operator: str | None = None


@dataclass(frozen=True, slots=True)
class GnssReading:
    connected: bool = False         # gpsd session up
    mode: int | None = None         # TPV.mode 0..3
    fix: bool | None = None         # mode >= 2 and recent; None when gpsd is not reachable
    lat: float | None = None
    lon: float | None = None
    alt: float | None = None        # m (MSL when given)
    speed_kmh: float | None = None
    sats_used: int | None = None
    sats_seen: int | None = None


@dataclass(frozen=True, slots=True)
class IfaceReading:
    present: bool
    up: bool | None = None
    rx_bytes: int | None = None
    tx_bytes: int | None = None
    rx_errors: int | None = None
    tx_errors: int | None = None
    rx_dropped: int | None = None
    tx_dropped: int | None = None


@dataclass(frozen=True, slots=True)
class Sample:
    """One detector tick. `t` is the probe clock's monotonic time in seconds."""

    t: float
    modem: bool = False             # a modem reading stands behind the radio fields
    modem_t: float | None = None    # when that reading was taken (probe clock); None = at `t`
    signal_known: bool = False
    rsrp: float | None = None
    rsrq: float | None = None
    rssi: float | None = None
    snr: float | None = None
    nr_rsrp: float | None = None
    nr_rsrq: float | None = None
    nr_snr: float | None = None
    tech: str | None = None
    reg: str | None = None
    registered: bool | None = None
    attached: bool | None = None
    datapath: bool | None = None    # uplink session (and TCP probe, when configured) up
    reach: bool | None = None       # the TCP probe alone
    rtt_ms: float | None = None
    last_ack_t: float | None = None  # when the uplink last got a PUBACK, on the probe clock
    iface_up: bool | None = None
    fix: bool | None = None
    lat: float | None = None
    lon: float | None = None
    alt: float | None = None
    speed_kmh: float | None = None
    sats_used: int | None = None


def compose(t: float, modem: ModemReading | None, gnss: GnssReading | None, *, datapath: bool | None = None,
            reach: bool | None = None, rtt_ms: float | None = None, last_ack_t: float | None = None,
            iface: IfaceReading | None = None, modem_t: float | None = None) -> Sample:
    m = modem or ModemReading()
    g = gnss or GnssReading()
    return Sample(
        t=t, modem=modem is not None, modem_t=modem_t if modem is not None else None,
        signal_known=m.signal_known, rsrp=m.rsrp, rsrq=m.rsrq, rssi=m.rssi,
        snr=m.snr, nr_rsrp=m.nr_rsrp, nr_rsrq=m.nr_rsrq, nr_snr=m.nr_snr, tech=m.tech, reg=m.reg,
        registered=m.registered, attached=m.attached, datapath=datapath, reach=reach, rtt_ms=rtt_ms,
        last_ack_t=last_ack_t, iface_up=None if iface is None else (iface.up if iface.present else False),
        fix=g.fix if gnss is not None else None, lat=g.lat, lon=g.lon, alt=g.alt, speed_kmh=g.speed_kmh,
        sats_used=g.sats_used)


# What the black box's ring keeps of a sample (agent/blackbox): radio and data path, never a position.
CONTEXT_FIELDS = ("rsrp", "rsrq", "snr", "nr_rsrp", "rssi", "tech", "reg", "attached", "datapath", "rtt_ms")


def context_fields(s: Sample) -> dict[str, object]:
    out: dict[str, object] = {}
    for k in CONTEXT_FIELDS:
        v = getattr(s, k)
        if v is not None:
            out[k] = int(v) if isinstance(v, bool) else v
    return out
