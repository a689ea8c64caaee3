"""[probes.can] structure errors and DBC validation at startup, each naming the key path."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from canhelp import ESR, FORD, TESLA, agent_config, can_section

from agent.clock import FakeClock
from agent.errors import ConfigError
from agent.probe import ProbeContext
from agent.probes.can import build, check
from agent.probes.can.dbc import resolve

RADAR_BUS = {"name": "radar", "interface": "virtual", "dbc": FORD}


def radar(**kw: Any) -> dict[str, Any]:
    return {"name": "mrr", "bus": "radar", "message": "MRR_Status_Radar", **kw}


def resolved(can: dict[str, Any]) -> Any:
    return resolve(agent_config(can).probes["can"])


def test_disabled_by_default_and_builds_nothing() -> None:
    cfg = agent_config({}).probes["can"]
    assert not cfg.enabled and not cfg.allow_transmit
    assert build(cfg, ProbeContext(clock=FakeClock(), emit=lambda r: None)) == []


def test_cycle_and_length_come_from_the_dbc() -> None:
    [spec] = resolved(can_section([RADAR_BUS], [radar(status=[{"signal": "CAN_BLOCKAGE_MNR", "fault_when": "== 1"}])]))
    assert (spec.can_id, spec.cycle_s, spec.timeout_s, spec.length) == (257, 0.030, 0.3, 8)
    assert spec.status[0].field.choices[1] == "Radar Blockage"


def test_bit_positions_work_without_a_dbc() -> None:
    [spec] = resolved(can_section([{"name": "b", "interface": "virtual"}], [
        {"name": "s", "bus": "b", "id": 0x18FF10A0, "extended": True, "cycle_ms": 20, "timeout_factor": 5,
         "counter": {"start_bit": 8, "length": 4},
         "status": [{"start_bit": 0, "length": 2, "fault_when": "in 1, 2"}]}]))
    assert (spec.key, spec.timeout_s, spec.counter_modulo, spec.min_length) == (0x98FF10A0, 0.1, 16, 2)


def test_value_names_in_conditions_and_a_lenient_dbc() -> None:
    """tesla_can.dbc has a VAL_ table for a signal that does not exist; cantools refuses it, we skip it."""
    can = can_section([{"name": "das", "interface": "virtual", "dbc": TESLA}], [
        {"name": "autopilot", "bus": "das", "message": "DAS_status2", "cycle_ms": 100,
         "counter": {"signal": "DAS_status2Counter"},
         "status": [{"signal": "DAS_pmmRadarFaultReason", "fault_when": "in 'PMM_RADAR_BLOCKED_FRONT', 2"},
                    {"signal": "DAS_pmmCameraFaultReason", "fault_when": "!= 'PMM_CAMERA_NO_FAULT'"}]}])
    [spec] = resolved(can)
    assert spec.can_id == 905 and spec.counter_modulo == 16
    assert spec.status[0].condition.operands == (1.0, 2.0)


@pytest.mark.parametrize(("can", "key", "msg"), [
    (can_section([RADAR_BUS], [radar(message="MRR_Status_Radr")]), "probes.can.sensor[0].message",
     "unknown message 'MRR_Status_Radr'"),
    (can_section([RADAR_BUS], [radar(status=[{"signal": "CAN_BLOCKAGE"}])]),
     "probes.can.sensor[0].status[0].signal", "unknown signal 'CAN_BLOCKAGE' in MRR_Status_Radar"),
    (can_section([RADAR_BUS], [radar(counter={"signal": "NOPE"})]), "probes.can.sensor[0].counter.signal",
     "unknown signal 'NOPE'"),
    (can_section([RADAR_BUS], [radar(status=[{"signal": "CAN_BLOCKAGE_MNR", "fault_when": "== 'Blocked'"}])]),
     "probes.can.sensor[0].status[0].fault_when", "unknown value name 'Blocked'"),
    (can_section([{"name": "esr", "interface": "virtual", "dbc": ESR}], [
        {"name": "esr", "bus": "esr", "message": "ESR_Status2"}]), "probes.can.sensor[0].cycle_ms",
     "ESR_Status2 has no GenMsgCycleTime"),
    (can_section([{"name": "b", "interface": "virtual"}], [{"name": "s", "bus": "b", "message": "X"}]),
     "probes.can.sensor[0].message", "needs a dbc on bus 'b'"),
    (can_section([RADAR_BUS], [radar(), radar(name="again", message="", id=257)]), "probes.can.sensor[1]",
     "already watched as sensor 'mrr'"),
    (can_section([RADAR_BUS], [{"name": "s", "bus": "radar", "id": 0x7AB, "cycle_ms": 10,
                                "status": [{"signal": "CAN_BLOCKAGE_MNR"}]}]),
     "probes.can.sensor[0].id", "not in the bus DBC"),
    (can_section([RADAR_BUS], [radar(id=258)]), "probes.can.sensor[0].id", "does not match"),
    (can_section([RADAR_BUS], [radar(length=4, status=[{"start_bit": 40, "length": 1}])]), "probes.can.sensor[0]",
     "need 6 bytes"),
    (can_section([{**RADAR_BUS, "dbc": "/nonexistent.dbc"}], []), "probes.can.bus[0].dbc", "cannot read DBC"),
])
def test_dbc_errors_name_the_key(can: dict[str, Any], key: str, msg: str) -> None:
    with pytest.raises(ConfigError) as e:
        resolved(can)
    assert e.value.key == key
    assert msg in e.value.message


def test_check_validates_the_dbc_map_without_building() -> None:
    can = can_section([RADAR_BUS], [radar(message="MRR_Status_Radr")])
    with pytest.raises(ConfigError, match="unknown message"):
        check(agent_config(can).probes["can"])
    check(agent_config({**can, "enabled": False}).probes["can"])  # disabled: nothing to check


def test_a_bad_dbc_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dbc"
    bad.write_text("BO_ 12 broken\n SG_ ???")
    with pytest.raises(ConfigError, match="cannot parse DBC") as e:
        resolved(can_section([{**RADAR_BUS, "dbc": str(bad)}], []))
    assert e.value.key == "probes.can.bus[0].dbc"


def test_missing_cantools_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cantools", None)
    with pytest.raises(ConfigError, match=r"pip install 'icvq-agent\[dbc\]'") as e:
        resolved(can_section([RADAR_BUS], [radar()]))
    assert e.value.key == "probes.can.bus[0].dbc"


@pytest.mark.parametrize(("can", "key", "msg"), [
    (can_section([], []), "probes.can.bus", "enabled without"),
    (can_section([RADAR_BUS, RADAR_BUS], []), "probes.can.bus[1].name", "duplicate bus"),
    (can_section([RADAR_BUS, {"name": "x", "interface": "virtual", "channel": "radar"}], []),
     "probes.can.bus[1].channel", "already monitored"),
    (can_section([RADAR_BUS], [radar(bus="body")]), "probes.can.sensor[0].bus", "unknown bus 'body'"),
    (can_section([RADAR_BUS], [radar(), radar()]), "probes.can.sensor[1].name", "duplicate sensor"),
    (can_section([RADAR_BUS], [{"name": "s", "bus": "radar"}]), "probes.can.sensor[0].message", "message"),
    (can_section([RADAR_BUS], [radar(id=0x800, message="")]), "probes.can.sensor[0].id", "extended"),
    (can_section([RADAR_BUS], [radar(mode="bcm", counter={"start_bit": 0, "length": 4})]),
     "probes.can.sensor[0].mode", "need every frame"),
    (can_section([{**RADAR_BUS, "fd": True}], [radar(mode="bcm")]), "probes.can.sensor[0].mode", "classic"),
    (can_section([RADAR_BUS], [radar(counter={"signal": "X", "start_bit": 3, "length": 4})]),
     "probes.can.sensor[0].counter.signal", "not both"),
    (can_section([RADAR_BUS], [radar(status=[{"length": 2}])]), "probes.can.sensor[0].status[0].start_bit",
     "start_bit and length"),
    (can_section([RADAR_BUS], [radar(e2e={"profile": "P03"})]), "probes.can.sensor[0].e2e.profile",
     "must be one of"),
    (can_section([RADAR_BUS], [radar(e2e={"profile": "P02", "data_id_list": [1, 2]})]),
     "probes.can.sensor[0].e2e.data_id_list", "16 data ids"),
    (can_section([RADAR_BUS], [radar(e2e={"profile": "P01", "offset_bits": 4})]),
     "probes.can.sensor[0].e2e.offset_bits", "multiple of 8"),
    (can_section([RADAR_BUS], [radar(e2e={"profile": "P05", "data_id_mode": "alt"})]),
     "probes.can.sensor[0].e2e.data_id_mode", "only P01"),
    (can_section([{**RADAR_BUS, "options": {"x": 1}, "interface": "socketcan"}], []), "probes.can.bus[0].options",
     "socketcan buses take none"),
    (can_section([{**RADAR_BUS, "interface": "pcan"}], []), "probes.can.bus[0].interface", "must be one of"),
    (can_section([RADAR_BUS], [radar(speed=3)]), "probes.can.sensor[0].speed", "unknown key"),
])
def test_structure_errors_name_the_key(can: dict[str, Any], key: str, msg: str) -> None:
    with pytest.raises(ConfigError) as e:
        agent_config(can)
    assert e.value.key == key
    assert msg in e.value.message


def _toml(path: Path) -> dict[str, Any]:
    import tomllib

    return tomllib.loads(path.read_text())


def test_the_documented_sample_is_valid() -> None:
    """config/probes/can.toml sets every key; it must parse as documented (its DBC path is an example)."""
    can = _toml(Path(__file__).parents[2] / "config/probes/can.toml")["probes"]["can"]
    cfg = agent_config(can).probes["can"]
    assert cfg.sensor[0].e2e.profile == "P01" and not cfg.sensor[0].counter.enabled
    documented = (Path(__file__).parents[2] / "config/probes/can.toml").read_text()
    for section in (cfg, cfg.bus[0], cfg.sensor[0], cfg.sensor[0].counter, cfg.sensor[0].e2e, cfg.sensor[0].status[0]):
        for key in type(section).__dataclass_fields__:
            if key in ("bus", "sensor", "counter", "e2e", "status"):
                continue  # tables, documented as [[probes.can.<key>]] / [probes.can.sensor.<key>]
            assert f"\n{key} = " in documented, f"{type(section).__name__}.{key} is not documented"


def test_the_ford_radar_profile_resolves_against_the_real_dbc() -> None:
    can = _toml(Path(__file__).parents[2] / "config/profiles/ford-cads-radar.toml")["probes"]["can"]
    can["bus"][0]["dbc"] = FORD
    [spec] = resolved(can)
    assert (spec.can_id, spec.cycle_s, spec.mode, len(spec.status)) == (257, 0.03, "bcm", 6)
