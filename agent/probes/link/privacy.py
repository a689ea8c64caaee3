"""Location precision fitted to purpose: the only place a GNSS position is turned into record fields.

Positions leave the car only on `link.loss` BEGIN (entry) and END (entry, exit) — never as a track — and
only snapped to a grid: the reported point is the centre of the `grid_m` x `grid_m` cell the fix fell in.
With the default 500 m grid the point is at most 354 m (half the cell's diagonal) from the fix: enough to
say which tunnel or coverage hole (entry and exit cells, direction, duration), not which house. Altitude is
rounded to 10 m (about three storeys: the level of a road, not of a flat), speed to 10 km/h (moving or
not is what the classifier needs). `send=False` removes the whole fix (entry{} and exit{} stay empty).
Pure functions, no clock, no I/O; docs/link.md and docs/data-inventory.md state the figures.
"""

from __future__ import annotations

import math
from typing import Any

from ...dataclass_shared import dataclass

M_PER_DEG_LAT = 111_320.0  # metres per degree of latitude (mean); a longitude degree is this x cos(lat)
DEFAULT_GRID_M = 500.0


@dataclass(frozen=True)
class Place:
    grid_m: float = DEFAULT_GRID_M
    send: bool = True

    @property
    def max_error_m(self) -> float:
        return self.grid_m * math.sqrt(2) / 2


DEFAULT_PLACE = Place()


def snap(lat: float, lon: float, grid_m: float) -> tuple[float, float]:
    """The centre of the grid cell holding (lat, lon): rows of `grid_m` in latitude, and in each row columns
    `grid_m` wide at the row's centre latitude (so a cell is about square everywhere). 5 decimals (≈ 1 m) keep
    the numbers short without adding precision the grid took away."""
    dlat = grid_m / M_PER_DEG_LAT
    row = math.floor(lat / dlat)
    lat_c = (row + 0.5) * dlat
    # Near the poles a longitude degree shrinks to nothing; cap the column width at 100 degrees of a cell.
    dlon = grid_m / (M_PER_DEG_LAT * max(0.01, math.cos(math.radians(lat_c))))
    lon_c = (math.floor(lon / dlon) + 0.5) * dlon
    return round(max(-90.0, min(90.0, lat_c)), 5), round((lon_c + 180.0) % 360.0 - 180.0, 5)


def fix_fields(place: Place, lat: float | None, lon: float | None, alt: float | None,
               speed_kmh: float | None) -> dict[str, Any]:
    """The position members of an entry{}/exit{} (without age_s), coarsened; {} when positions are off."""
    if not place.send:
        return {}
    out: dict[str, Any] = {}
    if lat is not None and lon is not None:
        out["lat"], out["lon"] = snap(lat, lon, place.grid_m)
    if alt is not None:
        out["alt_m"] = round(alt, -1)
    if speed_kmh is not None:
        out["speed_kmh"] = round(speed_kmh, -1)
    return out
