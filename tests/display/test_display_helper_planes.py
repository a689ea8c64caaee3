"""The scanout helper's plane choice with the card's mode objects faked at the ioctl wrappers (drm.plane_ids,
drm.get_plane, the property read): which planes are primary is found once and cached, each request reads them
afresh, and the cache is dropped when an id goes stale or no cached plane drives a CRTC. The real card is tested
in the qemu guest (test_display_drm_vm.py)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from agent.probes.display import drm, scanout_helper
from agent.probes.display.scanout_helper import ScanoutSampler

REQUEST = b'{"v": 1, "regions": []}'


@dataclass
class FakeCard:
    """plane id -> (type, crtc_id); fb_id stays 0 so an answer stops before GETFB2 (nothing scanned out)."""

    planes: dict[int, tuple[int, int]] = field(default_factory=dict)
    calls: Counter[str] = field(default_factory=Counter)

    def plane_ids(self, fd: int) -> list[int]:
        self.calls["GETPLANERESOURCES"] += 2
        return sorted(self.planes)

    def values(self, fd: int, obj_id: int, obj_type: int) -> dict[str, int]:
        self.calls["OBJ_GETPROPERTIES"] += 2
        return {"type": self.planes[obj_id][0]}

    def get_plane(self, fd: int, plane_id: int) -> drm.Plane:
        self.calls["GETPLANE"] += 1
        if plane_id not in self.planes:
            raise drm.DrmError("ioctl_failed", "GETPLANE: No such file or directory")
        return drm.Plane(plane_id, self.planes[plane_id][1], 0)


PRIMARY, OVERLAY, CURSOR = 1, 0, 2


@pytest.fixture
def card(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeCard, ScanoutSampler]]:
    fake = FakeCard({31: (PRIMARY, 35), 32: (OVERLAY, 0), 33: (CURSOR, 0), 41: (PRIMARY, 0)})
    monkeypatch.setattr(drm, "plane_ids", fake.plane_ids)
    monkeypatch.setattr(drm, "get_plane", fake.get_plane)
    monkeypatch.setattr(scanout_helper, "open_card", lambda path: os.open(os.devnull, os.O_RDONLY))
    sampler = ScanoutSampler("/dev/dri/card0")
    monkeypatch.setattr(sampler.props, "values", fake.values)
    yield fake, sampler
    sampler.close()


def answer(sampler: ScanoutSampler) -> tuple[int, int]:
    a = sampler.answer(REQUEST)
    assert a["ok"] and a["black"], a
    return a["plane"], a["crtc"]


def test_primary_planes_found_once_then_one_getplane_each(card: tuple[FakeCard, ScanoutSampler]) -> None:
    fake, sampler = card
    assert answer(sampler) == (31, 35)
    assert fake.calls == {"GETPLANERESOURCES": 2, "OBJ_GETPROPERTIES": 8, "GETPLANE": 2}
    fake.calls.clear()
    for _ in range(10):
        assert answer(sampler) == (31, 35)
    assert fake.calls == {"GETPLANE": 20}


def test_compositor_moving_to_another_primary_is_followed_without_a_search(
        card: tuple[FakeCard, ScanoutSampler]) -> None:
    fake, sampler = card
    answer(sampler)
    fake.planes.update({31: (PRIMARY, 0), 41: (PRIMARY, 45)})
    fake.calls.clear()
    assert answer(sampler) == (41, 45)
    assert fake.calls == {"GETPLANE": 2}


def test_stale_id_drops_the_cache(card: tuple[FakeCard, ScanoutSampler]) -> None:
    fake, sampler = card
    answer(sampler)
    del fake.planes[41]                       # the driver's planes changed: 41 is gone (ENOENT), 51 is new
    fake.planes[51] = (PRIMARY, 0)
    fake.calls.clear()
    assert answer(sampler) == (31, 35)
    assert fake.calls["GETPLANERESOURCES"] == 2
    fake.planes.update({31: (PRIMARY, 0), 51: (PRIMARY, 55)})
    assert answer(sampler) == (51, 55)        # the new plane is among the cached ones now


def test_no_cached_primary_driving_a_crtc_searches_again(card: tuple[FakeCard, ScanoutSampler]) -> None:
    fake, sampler = card
    answer(sampler)
    fake.planes.update({31: (PRIMARY, 0), 61: (PRIMARY, 65)})  # a hotplugged output lit by a plane not cached
    fake.calls.clear()
    assert answer(sampler) == (61, 65)
    assert fake.calls["GETPLANERESOURCES"] == 2
    fake.planes[61] = (PRIMARY, 0)            # between compositors: nothing attached, searched each request
    fake.calls.clear()
    assert answer(sampler) == (31, 0)
    assert answer(sampler) == (31, 0)
    assert fake.calls["GETPLANERESOURCES"] == 4


def test_a_card_that_fails_still_answers_the_reason(card: tuple[FakeCard, ScanoutSampler],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    fake, sampler = card
    answer(sampler)

    def gone(fd: int) -> list[int]:
        raise drm.DrmError("ioctl_failed", "GETPLANERESOURCES: No such device")

    monkeypatch.setattr(drm, "plane_ids", gone)
    fake.planes.clear()
    a = sampler.answer(REQUEST)
    assert (a["ok"], a["reason"]) == (False, "ioctl_failed")
