"""Location precision fitted to purpose (issue 14): positions snapped to the grid, only on episode BEGIN/END,
none at all when switched off."""

from __future__ import annotations

import math

import pytest
from link_timelines import CELL_BACK, CELL_GONE, run, timeline

from agent import catalog
from agent.probes.link.privacy import DEFAULT_GRID_M, M_PER_DEG_LAT, Place, fix_fields, snap
from agent.probes.link.settings import Config
from agent.records import Kind

UP = dict(registered=True, attached=True, datapath=True)


def _metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    dy = (a[0] - b[0]) * M_PER_DEG_LAT
    dlon = (a[1] - b[1] + 180) % 360 - 180  # across the antimeridian too
    dx = dlon * M_PER_DEG_LAT * math.cos(math.radians(a[0]))
    return math.hypot(dx, dy)


@pytest.mark.parametrize("fix", [(47.2692, 11.4041), (31.2304, 121.4737), (39.9042, 116.4074), (22.5431, 114.0579),
                                 (-33.86, 151.21), (69.65, 18.96), (0.0, 0.0), (47.0, -179.999)])
def test_the_point_sent_is_within_half_a_cell_diagonal(fix: tuple[float, float]) -> None:
    for grid in (50.0, 500.0, 2000.0):
        assert _metres(fix, snap(*fix, grid)) <= Place(grid).max_error_m + 2  # + the 5-decimal rounding


def test_default_grid_tells_tunnels_apart_but_not_houses() -> None:
    assert DEFAULT_GRID_M == 500.0 and round(Place().max_error_m) == 354
    portal = (47.2692, 11.4041)
    # Houses along one street (30 m plots) fall in a few cells: many houses per point sent.
    street = [snap(portal[0], portal[1] + i * 30 / (M_PER_DEG_LAT * math.cos(math.radians(portal[0]))), 500)
              for i in range(40)]
    assert len(set(street)) <= 4
    # The two portals of a 1.3 km tunnel do not share a cell.
    other = (portal[0], portal[1] + 1333 / (M_PER_DEG_LAT * math.cos(math.radians(portal[0]))))
    assert snap(*portal, 500) != snap(*other, 500)


def test_altitude_and_speed_are_coarsened_and_nothing_is_sent_when_off() -> None:
    f = fix_fields(Place(), 47.0, 11.0, 583.7, 83.4)
    assert f["alt_m"] == 580.0 and f["speed_kmh"] == 80.0 and (f["lat"], f["lon"]) == snap(47.0, 11.0, 500)
    assert fix_fields(Place(send=False), 47.0, 11.0, 583.7, 83.4) == {}


def test_no_position_at_all_when_switched_off() -> None:
    samples = timeline((95, CELL_GONE), (150, CELL_BACK | UP), until=170)
    on, _ = run(samples)
    assert on[0].fields["entry"] and on[-1].fields["exit"]
    actions, _ = run(samples, place=Place(send=False))
    assert [a.kind for a in actions] == ["begin", "end"]
    assert actions[0].fields["entry"] == {} and actions[-1].fields["entry"] == actions[-1].fields["exit"] == {}
    assert actions[-1].fields["cause"] == on[-1].fields["cause"]  # classified in the car all the same


def test_config_switches_reach_the_tracker() -> None:
    assert Config().place == Place(500.0, True)
    assert Config(position_grid_m=1000.0, send_position=False).place == Place(1000.0, False)


def test_positions_travel_only_in_episode_begin_and_end() -> None:
    """No record but link.loss declares a lat/lon, and link.loss is BEGIN/END only: never a track."""
    with_pos = [r for r in catalog.RECORDS if any(f.name.endswith((".lat", ".lon", "lat", "lon"))
                                                  for f in r.fields)]
    assert [r.name for r in with_pos] == ["link.loss"]
    assert set(with_pos[0].kinds) == {Kind.BEGIN, Kind.END}
