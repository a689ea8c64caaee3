"""SocketCAN for real: one guest boot runs vm_guest.py (every scenario, real vcan, BCM, can-utils, opendbc
DBCs) and prints its findings as JSON; the tests below each check one part of that run."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.vm
MARK = "ICVQ-CAN-RESULT "


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if shutil.which("qemu-system-x86_64") is None or shutil.which("canplayer") is None:
        pytest.fail("qemu-system-x86_64 or can-utils missing: run `make deps` (tools/deps/apt-can.txt)")
    from tools.vm import VmError, run_in_vm

    try:
        res = run_in_vm([sys.executable, str(Path(__file__).with_name("vm_guest.py"))], vcan=2, timeout_s=180,
                        cwd=REPO, rw_dirs=[], env={"PYTHONDONTWRITEBYTECODE": "1"})
    except VmError as e:
        pytest.fail(f"the test guest did not run: {e}")
    out = tmp_path_factory.mktemp("can-vm") / "guest-output.txt"
    out.write_text(res.output)  # kept for diagnosis: the full guest output with the JSON line
    lines = [ln for ln in res.output.splitlines() if ln.startswith(MARK)]
    assert res.returncode == 0 and lines, f"guest exited {res.returncode} (output in {out}):\n{res.output[-4000:]}"
    return dict(json.loads(lines[-1][len(MARK):]))


def records(run: dict[str, Any], name: str, *, windows: bool = False, **match: Any) -> list[dict[str, Any]]:
    """Records whose data matches, made during the replay (after the replay, the sensors fall silent:
    not part of the scenario) or, with `windows`, any time (per-window reports come after the fact)."""
    end = float("inf") if windows else run["end_ms"]
    return [r for r in run["records"] if r["name"] == name and run["t0_ms"] <= r["mono_ms"] <= end
            and all(r["data"].get(k) == v for k, v in match.items())]


def episodes(run: dict[str, Any], name: str, **match: Any) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    recs = records(run, name, **match)
    begins = {r["episode"]: r for r in recs if r["kind"] == "begin"}
    return [(begins[r["episode"]], r) for r in recs if r["kind"] == "end" and r["episode"] in begins]


@pytest.mark.parametrize(("sensor", "mode"), [("mrr", "bcm"), ("das", "raw")])
def test_one_second_of_silence_is_one_timeout_episode(run: dict[str, Any], sensor: str, mode: str) -> None:
    """Exactly one ~1 s episode for the silent second. (An emulated guest starved by a loaded host can stall
    canplayer, which is real silence on the bus and may add short episodes; those are not asserted.)"""
    eps = [(b, e) for b, e in episodes(run, "can.timeout", sensor=sensor) if not b["data"]["never_seen"]]
    silent = [(b, e) for b, e in eps if abs(e["data"]["duration_s"] - 1.0) <= 0.12]
    assert len(silent) == 1, eps
    begin, _ = silent[0]
    assert begin["data"]["silent_s"] == pytest.approx(begin["data"]["timeout_ms"] / 1000, abs=0.12)
    assert next(m["data"]["mode"] for m in run["records"]
                if m["name"] == "can.sensor" and m["data"]["sensor"] == sensor) == mode


def test_bcm_mode_reports_the_frames_the_kernel_received(run: dict[str, Any]) -> None:
    """The radar (33 frames/s, BCM mode) sends ~170 frames with a status that rarely changes: `frames` is the
    kernel's count from /proc/net/can-bcm (every frame, the 6-byte one included), `changes` the few
    notifications the agent read."""
    windows = records(run, "can.sensor", windows=True, sensor="mrr")
    assert windows and {w["data"]["frames_source"] for w in windows} == {"kernel_bcm"}
    assert sum(w["data"]["frames"] for w in windows) == run["radar_frames"]
    assert max(w["data"]["frames"] for w in windows) >= 25  # ~33 in a full one-second window
    assert sum(w["data"]["changes"] for w in windows) < run["radar_frames"] / 5


def test_radar_blockage_is_a_fault_episode_with_vss(run: dict[str, Any]) -> None:
    [(begin, end)] = episodes(run, "sensor.fault", sensor="mrr")
    assert begin["data"]["signal"] == "CAN_BLOCKAGE_MNR" and begin["data"]["value"] == 1
    assert begin["data"]["label"] == "Radar Blockage"
    assert begin["data"]["vss"] == "Vehicle.ADAS.ObstacleDetection.Front.Center.IsError"
    assert end["data"]["duration_s"] == pytest.approx(0.6, abs=0.12)


def test_tesla_radar_fault_reason_by_value_name(run: dict[str, Any]) -> None:
    [(begin, end)] = episodes(run, "sensor.fault", sensor="das")
    assert begin["data"]["label"] == "PMM_RADAR_BLOCKED_FRONT"
    assert end["data"]["duration_s"] == pytest.approx(0.5, abs=0.12)


def test_alive_counter_skip(run: dict[str, Any]) -> None:
    evs = records(run, "can.counter", windows=True, sensor="das")
    assert sum(e["data"]["jumps"] for e in evs) == 1 and sum(e["data"]["lost"] for e in evs) == 2
    assert sum(e["data"]["repeats"] for e in evs) == 0
    assert not records(run, "can.counter", windows=True, sensor="cam")


def test_corrupted_e2e_crc(run: dict[str, Any]) -> None:
    evs = records(run, "can.crc", windows=True, sensor="cam")
    assert sum(e["data"]["failures"] for e in evs) == 2
    ex = evs[0]["data"]["examples"][0]
    assert ex["received"] != ex["computed"] and len(ex["data"]) == 16


def test_bad_input_is_counted_not_fatal(run: dict[str, Any]) -> None:
    st = run["status"]
    assert st["state"] == "ok" and st["last_error"] == ""
    assert st["counters"]["fd_on_classic"] == 1  # cansend 7A0##0... on the classic adas bus
    assert st["counters"]["bad_length"] >= 2  # 4-byte camera frame (raw) and 6-byte radar frame (BCM DLC check)


def test_error_frames_give_bus_off_and_error_passive(run: dict[str, Any]) -> None:
    [(_, e)] = episodes(run, "can.bus_off", bus="chassis")
    assert e["data"]["duration_s"] == pytest.approx(0.5, abs=0.12)
    [(_, e)] = episodes(run, "can.error_passive", bus="chassis")
    assert e["data"]["duration_s"] == pytest.approx(0.2, abs=0.12)
    total: dict[str, int] = {}
    for ev in records(run, "can.error", windows=True, bus="chassis"):
        for k, v in ev["data"]["classes"].items():
            total[k] = total.get(k, 0) + v
    assert total == {"busoff": 1, "restarted": 1, "crtl": 2}


def test_the_kernel_filters_everything_else(run: dict[str, Any]) -> None:
    """vcan0 carried ~2,600 frames; its raw socket (no raw-mode sensor there, BCM does the radar) read only
    the 4 error frames. vcan1's socket read only frames of its two monitored ids."""
    buses = run["status"]["buses"]
    assert buses["chassis"]["frames_read"] == run["error_frames"]
    assert buses["adas"]["frames_read"] < run["injected"]["vcan1"] / 5
    assert buses["adas"]["reader"] == "recvmmsg" and buses["chassis"]["drops"] == buses["adas"]["drops"] == 0
    rates = [m["data"]["frames_s"] for m in records(run, "can.bus", bus="chassis") if "frames_s" in m["data"]]
    assert max(rates) > 400  # bus load comes from interface counters, not from reading frames


def test_nothing_is_ever_transmitted(run: dict[str, Any]) -> None:
    """candump on both buses saw exactly the data frames the test injected, the interfaces' tx counters
    grew by exactly the injected frames (error frames included), and the probe's only socket write was
    BCM RX_SETUP (opcode 5): a request to the local kernel, not a frame."""
    assert run["wire_frames"] == run["injected_data_frames"]
    assert run["tx_delta"] == run["injected"]
    assert [c["opcode"] for c in run["probe_sends"]] == [5]
    assert run["bcm_guard"].startswith("refused")


def test_batch_and_fallback_readers_agree(run: dict[str, Any]) -> None:
    fb = run["fallback"]
    assert fb["batched"] and not fb["slow_batched"]
    assert fb["fast"] == fb["slow"] and len(fb["fast"]) == 6
    assert fb["fast"][-1][1] == 12  # the FD frame came through with its 12 bytes
