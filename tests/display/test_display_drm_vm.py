"""A real Wayland head unit: one tools/vm guest boot with a real KMS device (qemu bochs-display, headless), real
weston on its DRM backend, weston-simple-shm as the HMI, the icvq-drm-sampler helper and the display probe on the
DRM source (tools/drm_guest.py, booted by tools/demo_drm.py). qemu's own QMP screendump is the ground truth for
what the screen showed.

Scenarios: HMI stopped → one freeze of the right length, cause hmi_stopped; HMI killed → weston's bare background
(static, not black); compositor killed → the console, black; dark-themed client (weston-terminal, black, a clock
ticking every second) → no black episode. Timing asserts are about the episodes' own fields (which the probe
measures), never about how long the test took.
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from agent.probes.display.framebuffer import Rect
from tools.qmp import colours, lit_pixels, sample_ppm

FB_INTERVAL_S = 0.25
pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    missing = [t for t in ("qemu-system-x86_64", "weston", "weston-simple-shm", "weston-terminal")
               if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{missing} missing: run `make deps` (tools/deps/apt-display.txt)")
    from tools.demo_drm import run_drm_guest
    from tools.vm import VmError

    shared = tmp_path_factory.mktemp("drm-vm")
    try:
        out, _ = run_drm_guest(shared)
    except (VmError, RuntimeError) as e:
        pytest.fail(f"the DRM guest did not run: {e}")
    out["shared"] = shared
    return out


def episodes(records: list[dict[str, Any]], name: str) -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    begins = [r for r in records if r["name"] == name and r["kind"] == "begin"]
    ends = {r["episode"]: r for r in records if r["name"] == name and r["kind"] == "end"}
    return [(b, ends.get(b["episode"])) for b in begins]


def between(eps: list[tuple[dict[str, Any], dict[str, Any] | None]], t0: float, t1: float) \
        -> list[tuple[dict[str, Any], dict[str, Any] | None]]:
    """Episodes detected (BEGIN stamped, guest clock) in [t0, t1)."""
    return [(b, e) for b, e in eps if t0 <= b["mono"] < t1]


def test_stopped_hmi_is_one_freeze_of_the_right_length(run: dict[str, Any]) -> None:
    m = run["marks"]
    eps = between(episodes(run["phase1"], "display.freeze"), m["hmi_stopped"], m["hmi_killed"])
    assert len(eps) == 1, eps
    begin, end = eps[0]
    assert begin["data"]["cause"] == "hmi_stopped" and end is not None
    assert {"region", "process", "drm"} <= set(end["data"]["signals"])
    stopped_s = m["hmi_continued"] - m["hmi_stopped"]
    assert end["data"]["duration_s"] == pytest.approx(stopped_s, abs=3 * FB_INTERVAL_S)
    kinds = {e["kind"] for e in end["data"]["evidence"]}
    assert {"region_stale", "process_stopped", "flips_stopped"} <= kinds


def test_no_black_while_the_hmi_or_the_bare_background_shows(run: dict[str, Any]) -> None:
    m = run["marks"]
    black = between(episodes(run["phase1"], "display.black"), 0.0, m["weston_killed"])
    assert black == []


def test_killed_hmi_leaves_the_static_background(run: dict[str, Any]) -> None:
    m = run["marks"]
    eps = between(episodes(run["phase1"], "display.freeze"), m["hmi_killed"], m["weston_killed"])
    assert [b["data"]["cause"] for b, _ in eps] == ["hmi_not_running"]
    end = eps[0][1]
    assert end is not None and end["data"]["ended_by"] == "black_screen"  # weston killed next: not a recovery
    # Ground truth: qemu shows nothing but weston's background colour, and the helper saw it lit and still.
    assert colours(run["shared"] / "bare.ppm") == {(0x20, 0x40, 0x80)}
    d = run["dumps"]["bare"]
    assert d["before"]["grid"] == d["after"]["grid"] and not d["before"]["black"] and d["before"]["lit"] == 1.0


def test_killed_compositor_is_a_black_screen(run: dict[str, Any]) -> None:
    m = run["marks"]
    eps = between(episodes(run["phase1"], "display.black"), m["weston_killed"], m["phase1_end"] + 1)
    assert len(eps) == 1, eps
    begin, end = eps[0]
    assert begin["data"]["cause"] == "black_frame", begin
    (frame,) = [e for e in begin["data"]["evidence"] if e["kind"] == "black_frame"]
    # Weston may blank before the console's buffer takes the plane (an fb_id change after the frame went dark):
    # with no lit pixel that is black whatever flipped, and the evidence says which it was.
    assert frame["lit_pct"] <= frame["lit_limit_pct"] and "flipped_since_black" in frame, frame
    assert end is not None and end["data"]["ended_by"] == "agent_stop", end
    # Within black_min_s (2 s) of the screen going black, give or take two samples and weston's own exit.
    assert begin["data"]["detected_after_s"] <= 2.0 + 2 * FB_INTERVAL_S, begin
    # Ground truth: qemu shows a (nearly) black screen and agrees with the helper.
    truth = sample_ppm(run["shared"] / "console.ppm")
    assert truth.black and run["dumps"]["console"]["after"]["black"], (truth, run["dumps"]["console"])


def test_dark_theme_with_a_ticking_clock_is_never_black(run: dict[str, Any]) -> None:
    assert [r for r in run["phase2"] if r["name"] in ("display.black", "display.freeze")] == []
    st = run["dark_state"]
    # The grid really was dark (a plain black test would have fired) and the clock region lit.
    assert st["dark_since"] is not None and st["black_since"] is None
    assert st["lit"] <= 0.02 and st["region_lit"][0] > 0.02
    # Ground truth: qemu's dumps are dark on the grid, lit and changing in the clock region.
    clock = (Rect(0, 0, 120, 24),)
    one, two = (sample_ppm(run["shared"] / f"{n}.ppm", regions=clock) for n in ("dark1", "dark2"))
    assert one.black and two.black
    assert one.regions != two.regions
    assert (one.region_lit[0] or 0) > 0.02


def test_dark_theme_without_a_region_is_never_black_while_it_flips(run: dict[str, Any]) -> None:
    assert [r for r in run["phase2_noregion"] if r["name"] in ("display.black", "display.freeze")] == []
    st = run["dark_state"]
    # Dark on the grid (a plain black test would have fired), yet some pixels lit: the clock. Whether a grid point
    # falls on its digits depends on the time of day; where none does, the helper's trace saw them.
    assert st["noregion_dark_since"] is not None and st["noregion_lit"] <= 0.02
    assert st["noregion_lit"] > 0 or (st["noregion_trace_lit"] or 0) > 0, st


def test_dark_text_between_grid_points_is_never_black_while_it_flips(run: dict[str, Any]) -> None:
    """Lower-case text changing every second, every lit pixel between the grid's rows: the grid sees a black
    frame at every sample, only the whole-row trace sees the text (before it, this was a black episode)."""
    assert [r for r in run["phase2_thin"] if r["name"] in ("display.black", "display.freeze")] == []
    st = run["dark_state"]
    assert st["thin_dark_since"] is not None and st["thin_lit"] == 0.0 and 0 < st["thin_trace_lit"] <= 0.02, st
    # Ground truth: qemu's dump is black to the grid, and has lit pixels the helper's trace agrees on.
    truth = sample_ppm(run["shared"] / "thin.ppm")
    d = run["dumps"]["thin"]
    assert truth.black and truth.bright_fraction == 0.0 and d["before"]["lit"] == 0.0
    assert lit_pixels(run["shared"] / "thin.ppm") > 0 and d["before"]["trace_lit"] > 0


@pytest.mark.parametrize("name", ["live", "stopped", "bare"])
def test_helper_matches_qemu_screendump(run: dict[str, Any], name: str) -> None:
    """Where the screen stood still across the dump (the helper's samples before and after agree), the helper's
    grid and region CRCs equal the same grid computed over qemu's screendump."""
    d = run["dumps"][name]
    regions = tuple(Rect(*r) for r in d["regions"])
    truth = sample_ppm(run["shared"] / f"{name}.ppm", regions=regions)
    if name == "live":  # animating: only the lit state can be compared
        assert truth.black == d["before"]["black"] is False
        return
    assert d["before"]["grid"] == d["after"]["grid"]
    assert truth.grid == d["before"]["grid"] and list(truth.regions) == d["before"]["regions"]
    assert truth.bright_fraction == pytest.approx(d["before"]["lit"], abs=1e-6)
