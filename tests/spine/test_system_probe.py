"""The system probe's readers (issue 13: read by hand instead of through psutil): the temperature names psutil
gave, from sysfs trees built in the test; the metrics from a /proc built in the test; and on this host, the
same metric names and values psutil reads in the same moment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent.clock import SystemClock
from agent.probe import ProbeContext
from agent.probes.system import Config, SystemProbe
from agent.probes.system import temps as system_temps
from agent.records import Record


def tree(root: Path, files: dict[str, str]) -> str:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return str(root)


HWMON = {
    # two chips, one of them on two hwmon nodes (its sensors form one list), one sensor under device/
    "class/hwmon/hwmon0/name": "cpu_thermal\n", "class/hwmon/hwmon0/temp1_input": "45100\n",
    "class/hwmon/hwmon0/temp2_input": "47000\n", "class/hwmon/hwmon0/temp2_label": "big\n",
    "class/hwmon/hwmon0/temp2_crit": "95000\n",
    "class/hwmon/hwmon1/name": "nvme\n", "class/hwmon/hwmon1/temp1_input": "38000\n",
    "class/hwmon/hwmon1/temp1_label": "Composite\n",
    "class/hwmon/hwmon2/name": "cpu_thermal\n", "class/hwmon/hwmon2/temp1_input": "50000\n",
    "class/hwmon/hwmon3/device/name": "acpitz\n", "class/hwmon/hwmon3/device/temp1_input": "27800\n",
    "class/hwmon/hwmon4/name": "fan_only\n", "class/hwmon/hwmon4/fan1_input": "1200\n",
    # thermal zones are ignored while any hwmon sensor exists
    "class/thermal/thermal_zone0/type": "soc-thermal\n", "class/thermal/thermal_zone0/temp": "51000\n",
}
ZONES = {
    "class/thermal/thermal_zone0/type": "soc-thermal\n", "class/thermal/thermal_zone0/temp": "51000\n",
    "class/thermal/thermal_zone1/type": "gpu-thermal\n", "class/thermal/thermal_zone1/temp": "49500\n",
    "class/thermal/thermal_zone2/type": "soc-thermal\n", "class/thermal/thermal_zone2/temp": "52000\n",
    "class/thermal/cooling_device0/type": "fan\n",
}


@pytest.mark.parametrize(("files", "names"), [
    (HWMON, ["acpitz.0", "cpu_thermal.0", "cpu_thermal.big", "cpu_thermal.2", "nvme.Composite"]),
    (ZONES, ["gpu-thermal.0", "soc-thermal.0", "soc-thermal.1"]),
    ({"class/hwmon/hwmon0/name": "fan_only\n", "class/hwmon/hwmon0/fan1_input": "1\n"}, []),
    ({}, []),
], ids=["hwmon", "thermal-zones", "no-temp-sensor", "no-sysfs"])
def test_sensor_names_are_psutils(tmp_path: Path, files: dict[str, str], names: list[str]) -> None:
    found = system_temps.discover(tree(tmp_path, files))
    assert [n for n, _ in found] == names
    assert all(Path(p).exists() for _, p in found)


def probe(tmp_path: Path, proc: str = "/proc", sys_root: str = "/sys", **cfg: Any) -> SystemProbe:
    """A probe whose samples the test takes itself (`sample()`), with the spool's directory in tmp_path."""
    ctx = ProbeContext(clock=SystemClock(), emit=lambda r: None, spool_dir=str(tmp_path))
    return SystemProbe(Config(**cfg), ctx, proc=proc, sys_root=sys_root)


def values(records: list[Record]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in records:
        if r.name == "system.temp_c":
            out[f"temp.{r.data['sensor']}"] = r.data["v"]
        else:
            out[r.name] = r.data
    return out


def test_metrics_from_a_proc_tree(tmp_path: Path) -> None:
    pid = os.getpid()
    files = {"stat": "cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 100 0 100 800 0 0 0 0 0 0\nintr 1 2\n",
             "meminfo": "MemTotal: 1000 kB\nMemFree: 10 kB\nMemAvailable: 250 kB\n",
             f"{pid}/statm": "5000 2560 300 1 0 400 0\n", "1/stat": "", "42/stat": "", "self": "", "sys/x": ""}
    proc = tree(tmp_path / "proc", files)
    p = probe(tmp_path, proc=proc, sys_root=tree(tmp_path / "sys", HWMON))
    (tmp_path / "proc/stat").write_text("cpu  150 0 150 900 0 0 0 0 0 0\ncpu0 150 0 150 900 0 0 0 0 0 0\n")
    v = values(list(p.sample()))
    assert v["system.cpu_pct"] == 50.0  # 100 busy ticks of 200
    assert (v["system.mem_used_pct"], v["system.mem_available_mib"]) == (75.0, round(250 / 1024, 2))
    assert v["system.procs"] == 3  # the numeric entries: 1, 42 and this process
    assert v["agent.rss_mib"] == round(2560 * os.sysconf("SC_PAGE_SIZE") / 2**20, 2)
    assert v["temp.cpu_thermal.big"] == 47.0 and v["temp.nvme.Composite"] == 38.0
    assert v["agent.cpu_pct"] >= 0
    # a sensor whose reading fails is skipped and counted; the others keep their names
    (tmp_path / "sys/class/hwmon/hwmon1/temp1_input").write_text("busy\n")
    v = values(list(p.sample()))
    assert "temp.nvme.Composite" not in v and v["temp.cpu_thermal.2"] == 50.0
    assert p.counters.snapshot()["temp_unreadable"] == 1
    assert v["system.cpu_pct"] == 0.0  # not one tick since the last sample
    # unreadable meminfo: the two memory metrics are left out and counted, the rest is reported
    (tmp_path / "proc/meminfo").write_text("garbage\n")
    v = values(list(p.sample()))
    assert "system.mem_used_pct" not in v and "system.load1" in v
    assert p.counters.snapshot()["meminfo_unreadable"] == 1
    p.close()


def test_this_host_matches_psutil(tmp_path: Path) -> None:
    """The same names as before the change, and values psutil reads in the same moment (the host's own)."""
    p = probe(tmp_path, temperatures=True)
    v = values(list(p.sample()))
    want = {"system.cpu_pct", "system.load1", "system.load5", "system.mem_used_pct", "system.mem_available_mib",
            "system.procs", "system.disk_used_pct", "system.disk_free_mib", "agent.cpu_pct", "agent.rss_mib"}
    assert want <= set(v)
    temps = {f"temp.{chip}.{t.label or i}" for chip, ts in psutil.sensors_temperatures().items()
             for i, t in enumerate(ts)}
    assert set(v) - want == temps
    vm = psutil.virtual_memory()
    assert abs(v["system.mem_used_pct"] - vm.percent) < 5
    assert abs(v["system.procs"] - len(psutil.pids())) < 20
    assert abs(v["agent.rss_mib"] - psutil.Process().memory_info().rss / 2**20) < 5
    assert 0 <= v["system.cpu_pct"] <= 100
    p.close()
