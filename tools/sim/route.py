"""A drive as NMEA 0183 for real gpsd (through gpsfake): one epoch per scenario second.

Each epoch has the same four sentences (RMC, GGA, GSA, GSV) with or without a fix, so gpsfake's per-sentence
cycle gives every scenario second the same wall time. Without a fix the receiver keeps talking (status V,
quality 0, mode 1), as a real one in a tunnel does; gpsd then reports TPV mode 1, still with the time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

SENTENCES_PER_EPOCH = 4
BASE = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
EARTH_M = 6_371_000.0


@dataclass(frozen=True)
class GnssPoint:
    fix: bool = True
    lat: float = 47.2692
    lon: float = 11.4041
    alt_m: float = 574.0
    speed_kmh: float = 80.0
    course: float = 90.0
    sats: int = 9


def drive(lat0: float, lon0: float, course: float, speed_kmh: float, t: float) -> tuple[float, float]:
    """Straight line at constant speed (flat earth is fine over a few km)."""
    d = speed_kmh / 3.6 * t
    dlat = d * math.cos(math.radians(course)) / EARTH_M
    dlon = d * math.sin(math.radians(course)) / (EARTH_M * math.cos(math.radians(lat0)))
    return lat0 + math.degrees(dlat), lon0 + math.degrees(dlon)


def checksum(body: str) -> str:
    c = 0
    for ch in body.encode("ascii"):
        c ^= ch
    return f"{c:02X}"


def sentence(body: str) -> str:
    return f"${body}*{checksum(body)}"


def _lat(v: float) -> str:
    a = abs(v)
    return f"{int(a):02d}{(a - int(a)) * 60:07.4f},{'N' if v >= 0 else 'S'}"


def _lon(v: float) -> str:
    a = abs(v)
    return f"{int(a):03d}{(a - int(a)) * 60:07.4f},{'E' if v >= 0 else 'W'}"


def epoch(t_s: int, p: GnssPoint, base: datetime = BASE) -> list[str]:
    ts = base + timedelta(seconds=t_s)
    hms, dmy = ts.strftime("%H%M%S.00"), ts.strftime("%d%m%y")
    if p.fix:
        knots = p.speed_kmh / 1.852
        prns = [f"{i:02d}" for i in range(1, p.sats + 1)][:12]
        gsv = ",".join(f"{i:02d},{30 + 5 * i},{(40 * i) % 360:03d},{38 + i % 8}" for i in range(1, 5))
        bodies = [
            f"GPRMC,{hms},A,{_lat(p.lat)},{_lon(p.lon)},{knots:.1f},{p.course:.1f},{dmy},,,A",
            f"GPGGA,{hms},{_lat(p.lat)},{_lon(p.lon)},1,{p.sats:02d},0.9,{p.alt_m:.1f},M,46.9,M,,",
            f"GPGSA,A,3,{','.join(prns + [''] * (12 - len(prns)))},1.5,0.9,1.2",
            f"GPGSV,1,1,04,{gsv}",
        ]
    else:
        bodies = [f"GPRMC,{hms},V,,,,,,,{dmy},,,N", f"GPGGA,{hms},,,,,0,00,,,M,,M,,",
                  "GPGSA,A,1,,,,,,,,,,,,,,,", "GPGSV,1,1,00"]
    return [sentence(b) for b in bodies]


def write_nmea(path: Path, points: Iterable[tuple[int, GnssPoint]], base: datetime = BASE) -> Path:
    lines = [s for t, p in points for s in epoch(t, p, base)]
    path.write_text("\r\n".join(lines) + "\r\n")
    return path


def sample_route(gnss: Callable[[float], GnssPoint], duration_s: float) -> list[tuple[int, GnssPoint]]:
    return [(t, gnss(float(t))) for t in range(int(duration_s) + 1)]


def scenario_time(tpv_time: str, base: datetime = BASE) -> float | None:
    """gpsd's TPV.time ("2026-01-01T12:00:20.000Z") → scenario seconds; None when unparsable."""
    try:
        t = datetime.fromisoformat(tpv_time.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (t - base).total_seconds()
