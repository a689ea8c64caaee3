"""The shipped systemd unit, run for real: systemd 252 as PID 1 in the tools/vm guest (Debian kernel, vcan0).

One guest boot (tests/install/vm_guest_run.py) installs the unit as docs/install.md says, starts a broker
and a subscriber on the guest's loopback and drives the agent through start -> READY, a watchdog kill and
restart, a clean stop with flush and a broken config; a copy of the unit with every hardening directive
as shipped (icvq-vmcheck.service) runs tests/install/vm_sandbox_check.py to see what the probes can still
open and what the sandbox refuses. The guest records JSON; the assertions are here.

What the test install changes, and why (tests/install/dropins/, tests/install/vm_deploy.py):
- ExecStart= points at a virtual environment (/opt/icvq/venv on the host's Debian Python), the route
  docs/install.md documents; pyenv's interpreter lives in /root, out of reach for User=icvq.
- WatchdogSec=6, RestartSec=1: the restart fits in one boot.
- CPUQuota= (none) for the agent only: the guest CPU is emulated and 20-35x slower; the check unit keeps
  the shipped 20% and the test reads the cgroup's cpu.max.

The guest fails (never skips) when qemu or the kernel cannot run: run `make deps`.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import vm_deploy  # beside this file (pytest puts tests/install on sys.path)
from agentproc import to_toml

from agent import wire
from tools.vm import VmError, run_in_vm

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.vm

# The agent's config in the guest. batch_linger_s keeps records a few seconds in the spool, so the stop
# scenario has something to flush; everything else is quick so one boot stays short.
CONFIG: dict[str, dict[str, Any]] = {
    "vehicle": {"id": "VMTEST0001", "device": "hu", "fleet": "vmtest"},
    "uplink": {"host": "127.0.0.1", "port": 1883, "keepalive_s": 5, "batch_linger_s": 3.0,
               "backoff_min_s": 0.2, "backoff_max_s": 1.0, "reconnect_probe_s": 0.5},
    "spool": {"path": "/var/lib/icvq/spool.db", "commit_interval_s": 0.2},
    "history": {"path": "/var/lib/icvq/history.db"},
    "control": {"socket": "/run/icvq/control.sock", "group": "icvq"},
    "agent": {"health_interval_s": 5},
    "probes.system": {"interval_s": 1.0},
    # The kernel log as the unit hands it over (fd 0); the GPU-hang line the guest script writes to it
    # must come out as a display.gpu_hang event.
    "probes.display": {"enabled": True, "kmsg_path": "/dev/kmsg"},
    # SocketCAN on vcan0, where the guest script runs two cangen senders (100 ms): raw and BCM sockets.
    "probes.can": {"enabled": True, "interval_s": 2.0, "bus": [{"name": "adas", "channel": "vcan0"}],
                   "sensor": [{"name": "radar", "bus": "adas", "id": 0x123, "cycle_ms": 100.0, "length": 8},
                              {"name": "cam", "bus": "adas", "id": 0x124, "cycle_ms": 100.0, "length": 8,
                               "mode": "bcm"}]},
}
# The agent's health verdict (agent/health.py), then the spool: "degraded: uplink offline (...) for 3s | spool ..."
STATUS_LINE = re.compile(r"^(healthy|(degraded|failing): .+) \| spool \d+ records, \d+ batches$")
KMSG_RECORD = re.compile(r"^\d+,\d+,\d+,[^;]*;")


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("unit-vm")
    try:
        vm_deploy.build_overlay(tmp / "overlay", to_toml(CONFIG))
    except vm_deploy.DeployError as e:
        pytest.fail(str(e), pytrace=False)
    result = tmp / "result.json"
    try:
        res = run_in_vm([sys.executable, str(HERE / "vm_guest_run.py"), str(result)], systemd=True,
                        overlay_dir=tmp / "overlay", cwd=tmp, rw_dirs=[tmp], timeout_s=300)
    except VmError as e:
        pytest.fail(f"the tools/vm guest could not run; run `make deps` (qemu, kernel): {e}", pytrace=False)
    assert res.returncode == 0 and result.exists(), (
        f"guest script failed (rc {res.returncode}):\n{res.output[-4000:]}\nconsole:\n{res.console[-3000:]}")
    data: dict[str, Any] = json.loads(result.read_text())
    data["vm"] = {"boot_s": res.boot_s, "wall_s": round(res.wall_s, 1)}
    for m in data["messages"]:
        m["decoded"] = wire.decode(bytes.fromhex(m["payload"]))
    return data


def step(guest: dict[str, Any], name: str) -> Any:
    assert name not in guest["errors"], f"guest step {name} failed:\n{guest['errors'][name]}"
    assert name in guest["steps"], f"guest step {name} did not run"
    return guest["steps"][name]


def check(guest: dict[str, Any], name: str) -> Any:
    report = step(guest, "sandbox_check")["report"]
    assert report is not None, f"icvq-vmcheck.service wrote no report: {step(guest, 'sandbox_check')}"
    entry = report[name]
    assert entry["ok"], f"sandbox check {name} failed:\n{entry.get('error')}"
    return entry["value"]


def batches(guest: dict[str, Any], since: float = 0.0) -> list[wire.Batch]:
    return [m["decoded"] for m in guest["messages"] if isinstance(m["decoded"], wire.Batch) and m["t"] >= since]


def icvq_uid(guest: dict[str, Any]) -> str:
    m = re.match(r"uid=(\d+)\(icvq\)", step(guest, "install")["id"])
    assert m, step(guest, "install")["id"]
    return m[1]


# --- install, start, READY -------------------------------------------------------------------------------


def test_install_steps_of_the_docs_work(guest: dict[str, Any]) -> None:
    inst = step(guest, "install")
    for name in ("sysusers", "tmpfiles", "config", "reload"):
        assert inst[name]["rc"] == 0, (name, inst[name])
    groups = set(re.findall(r"\d+\((\w+)\)", inst["id"].split("groups=", 1)[1]))
    assert groups == {"icvq", "video", "input", "dialout"}
    assert inst["stat"] == ["/var/lib/icvq 750 icvq:icvq", "/etc/icvq 755 root:root",
                            "/etc/icvq/agent.d 750 root:icvq", "/etc/icvq/agent.toml 640 root:icvq"]


def test_start_waits_for_ready_and_shows_status(guest: dict[str, Any]) -> None:
    start = step(guest, "start")
    assert start["systemctl"]["rc"] == 0, start
    show = start["show"]
    assert (show["ActiveState"], show["SubState"], show["Result"]) == ("active", "running", "success")
    assert STATUS_LINE.match(show["StatusText"]), show["StatusText"]
    assert show["WatchdogUSec"] == "6s"
    connected = step(guest, "connected")
    assert connected["ok"], connected
    assert STATUS_LINE.match(connected["show"]["StatusText"]) and "uplink offline" not in \
        connected["show"]["StatusText"], connected["show"]["StatusText"]


def test_agent_runs_unprivileged_and_adopts_kmsg_from_fd0(guest: dict[str, Any]) -> None:
    proc = step(guest, "agent_process")
    st = proc["status"]
    assert st["Uid"].split() == [icvq_uid(guest)] * 4
    assert (st["CapEff"], st["CapBnd"], st["NoNewPrivs"], st["Seccomp"]) == ("0" * 16, "0" * 16, "1", "2")
    # The unit's contract: the agent keeps a copy of the kernel log descriptor and puts /dev/null on fd 0.
    assert proc["fds"]["0"] == "/dev/null", proc["fds"]
    assert "/dev/kmsg" in proc["fds"].values(), proc["fds"]
    assert "reading the kernel log from the descriptor systemd passed on stdin" in guest["journal"]


def test_display_probe_reads_the_kernel_log_through_fd0(guest: dict[str, Any]) -> None:
    kmsg = step(guest, "kmsg_to_display_probe")
    assert kmsg["display"]["sources"]["kmsg"] == "up", kmsg["display"]
    hangs = [r for b in batches(guest) for r in b.records if r.name == "display.gpu_hang"]
    assert any("icvq-vmtest" in json.dumps(wire.record_json(r)) for r in hangs), hangs


def test_can_probe_reads_vcan0_under_the_hardening(guest: dict[str, Any]) -> None:
    assert all(step(guest, "can_traffic")["running"])
    can_status = step(guest, "kmsg_to_display_probe")["can"]
    assert can_status is not None and can_status["state"] == "ok", can_status
    sensors: dict[str, list[dict[str, Any]]] = {}
    for b in batches(guest):
        for r in b.records:
            if r.name == "can.sensor":
                sensors.setdefault(r.data["sensor"], []).append(dict(r.data))
    assert set(sensors) == {"radar", "cam"}, sensors.keys()
    radar = [m for m in sensors["radar"] if m["frames"] > 0]
    cam = [m for m in sensors["cam"] if m.get("changes", 0) > 0]
    assert radar and all(m["mode"] == "raw" for m in radar), sensors["radar"]  # raw socket
    assert cam and all(m["mode"] == "bcm" for m in cam), sensors["cam"]  # CAN_BCM socket
    # The kernel's BCM frame count is readable under the sandbox (/proc/net/can-bcm, ProtectProc=default).
    assert any(m["frames_source"] == "kernel_bcm" and m["frames"] for m in cam), sensors["cam"]
    bus = [r.data for b in batches(guest) for r in b.records if r.name == "can.bus"]
    assert bus and any(m.get("frames_s", 0) > 0 for m in bus), bus


# --- watchdog ---------------------------------------------------------------------------------------------


def test_hung_agent_is_killed_by_the_watchdog_and_restarted(guest: dict[str, Any]) -> None:
    wd = step(guest, "watchdog")
    assert wd["ok"], wd
    assert wd["old_pid_gone"] and wd["after"]["MainPID"] != str(wd["old_pid"])
    assert int(wd["after"]["NRestarts"]) == 1
    assert "watchdog" in [t["Result"] for t in wd["transitions"]], wd["transitions"]
    assert "icvq-agent.service: Watchdog timeout (limit 6s)!" in guest["journal"]
    assert "icvq-agent.service: Failed with result 'watchdog'." in guest["journal"]
    # At most 6 s without a ping before the kill (less: the last ping was already some time ago).
    assert wd["killed_s"] is not None and wd["killed_s"] < 12, wd
    assert wd["batch_after_restart"], "the restarted agent published nothing"


# --- stop -------------------------------------------------------------------------------------------------


def test_stop_flushes_the_spool_and_exits_zero(guest: dict[str, Any]) -> None:
    stop = step(guest, "stop")
    assert stop["systemctl"]["rc"] == 0, stop
    show = stop["show"]
    assert (show["ActiveState"], show["Result"]) == ("inactive", "success"), show
    assert (show["ExecMainCode"], show["ExecMainStatus"]) == ("1", "0"), show  # CLD_EXITED, status 0
    assert stop["stop_s"] < 15, stop  # TimeoutStopSec=15 would have SIGKILLed it
    assert stop["spool_left"] == {"records": 0, "batches": 0}
    after = [m for m in guest["messages"] if m["t"] >= stop["stop_at"]]
    kinds = [("batch" if isinstance(m["decoded"], wire.Batch) else m["decoded"].kind) for m in after]
    assert "batch" in kinds and kinds[-1] == "death", kinds
    assert kinds.index("batch") < len(kinds) - 1
    death = after[-1]["decoded"]
    assert isinstance(death, wire.Status) and death.fields.get("clean") is True, death
    # At least once, nothing lost: every batch sequence number from the first on arrived (duplicates allowed).
    seqs = sorted({b.id.seq for b in batches(guest)})
    assert seqs == list(range(1, seqs[-1] + 1)), seqs


# --- broken config ----------------------------------------------------------------------------------------


def test_broken_config_exits_78_and_is_not_restarted(guest: dict[str, Any]) -> None:
    broken = step(guest, "broken_config")
    assert broken["reset_failed"]["rc"] == 0 and broken["before"]["NRestarts"] == "0", broken
    assert broken["systemctl"]["rc"] != 0, broken
    for when in ("first", "after"):  # right away, and after 3x RestartSec
        show = broken[when]
        assert (show["ActiveState"], show["SubState"], show["Result"]) == ("failed", "failed", "exit-code"), show
        assert (show["ExecMainStatus"], show["NRestarts"]) == ("78", "0"), show
    assert "uplink.port: must be >= 1, got 0" in guest["journal"]
    assert "status=78/CONFIG" in guest["journal"]
    # The watchdog restart is the only one in the whole run.
    assert guest["journal"].count("Scheduled restart job") == 1


# --- what the probes can open under the shipped hardening (icvq-vmcheck.service) ------------------------


def test_check_unit_ran_under_the_same_identity(guest: dict[str, Any]) -> None:
    sc = step(guest, "sandbox_check")
    assert sc["done"] and sc["show"]["Result"] == "success", sc["show"]
    ident = check(guest, "identity")
    assert (ident["user"], ident["group"]) == ("icvq", "icvq")
    assert ident["groups"] == ["dialout", "icvq", "input", "video"]
    assert (ident["cap_eff"], ident["cap_bnd"], ident["cap_amb"]) == ("0" * 16,) * 3
    assert (ident["no_new_privs"], ident["seccomp"], ident["umask"]) == ("1", "2", "0027")


def test_fd0_is_the_kernel_log_and_the_path_is_closed(guest: dict[str, Any]) -> None:
    kmsg = check(guest, "stdin_kmsg")
    assert kmsg["char_device"] and kmsg["rdev"] == [1, 11], kmsg
    assert KMSG_RECORD.match(kmsg["record"]), kmsg["record"]
    assert kmsg["write"] == "EBADF"  # opened read-only
    assert check(guest, "kmsg_by_path") == "EACCES"  # ProtectKernelLogs=yes


def test_can_sockets_work_on_vcan0(guest: dict[str, Any]) -> None:
    assert check(guest, "af_can_raw") == {"id": 0x7A1, "data": "deadbeef"}
    assert check(guest, "af_can_bcm") == {"id": 0x7A2, "data": "cafe"}
    pc = check(guest, "python_can")
    assert pc is not None and (pc["id"], pc["data"]) == (0x18FEF1A3, "010203"), pc


def test_netlink_ip_and_proc_work(guest: dict[str, Any]) -> None:
    nl = check(guest, "netlink")
    assert nl["ip"]["ifname"] == "vcan0" and nl["ip"]["link_type"] == "can" and "UP" in nl["ip"]["flags"]
    assert "vcan0" in nl["psutil_if"]
    assert check(guest, "proc_of_others")["pid1"] == "(systemd)"
    assert check(guest, "state_dir") == {"file_mode": "0o640"}  # UMask=0027


def test_sandbox_refuses_what_it_should(guest: dict[str, Any]) -> None:
    assert check(guest, "refused") == {
        "mmap_write_exec": "EPERM",  # MemoryDenyWriteExecute=yes
        "write_owned_dir": "EROFS",  # ProtectSystem=strict, on a directory icvq owns
        "list_root": "EACCES",
        "root_mode": "0o0",  # ProtectHome=yes: systemd's inaccessible node
        "af_packet": "EAFNOSUPPORT",  # RestrictAddressFamilies=
        "setpriority": "EPERM",  # SystemCallFilter=~@resources, SystemCallErrorNumber=EPERM
        # DevicePolicy=closed: the device cgroup refuses /dev/ttyS0 (on a twin node the icvq user owns, so
        # file permissions allow and the answer does not depend on how the guest's /dev/ttyS0 is owned).
        "tty_device": "EPERM",
        "tty_owner": "icvq 0o600",
        "unshare_user": "EPERM",  # RestrictNamespaces=yes
    }


def test_resource_limits_are_applied(guest: dict[str, Any]) -> None:
    limits = check(guest, "cgroup_limits")
    assert limits["cgroup"] == "/system.slice/icvq-vmcheck.service"
    assert (limits["memory.max"], limits["memory.high"]) == (str(128 << 20), str(112 << 20))
    assert limits["cpu.max"] == "20000 100000"  # CPUQuota=20%
    assert (limits["pids.max"], limits["nice"]) == ("128", 10)

