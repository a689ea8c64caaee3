"""The helper's shipped unit, run for real: systemd 252 as PID 1 in the tools/vm guest with a bochs-display KMS
device. The unit file is copied byte for byte; a test drop-in only points ExecStart= at the Debian Python with
the working tree's agent/ package (pyenv's interpreter lives in /root, which ProtectHome= hides) — no sandboxing
directive is touched; CPUQuota= is lifted because the guest CPU is emulated (as tests/install does for the
agent). With nothing but the console on the screen, the helper must answer a sample (so its
sandbox lets GETFB2 → MAP_DUMB → mmap work), the socket must admit group icvq-drm and refuse others, and the
agent's own side (fb_id, CRTC state) must work without any capability.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tools.vm import VmError, run_in_vm

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "systemd"
PYTHON = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
MARK = "ICVQ-UNIT-RESULT "
pytestmark = pytest.mark.vm

DROPIN = f"""\
[Service]
# Test only: the Debian interpreter and the working tree's agent package (see the module docstring).
ExecStart=
ExecStart={PYTHON} -m agent.probes.display.scanout_helper --card /dev/dri/card0 --socket /run/icvq-drm/sampler.sock
Environment=PYTHONPATH=/opt/icvq-drm
# The guest CPU is emulated (20-35x slower): at 10 % of it, Python's start-up alone takes half a minute.
CPUQuota=
"""

# udev's own rule (50-udev-default.rules: card nodes GROUP="video", 0660) does not run on the guest's card node
# (it is created before udevd starts and the guest's coldplug leaves it root 0600): this oneshot applies the same
# ownership before the helper starts, as udev does on a real unit.
DRM_PERMS = """\
[Unit]
Description=icvq VM test: /dev/dri/card0 as udev sets it (root:video 0660)
Before=icvq-drm-sampler.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -c 'chgrp video /dev/dri/card0 && chmod 0660 /dev/dri/card0'
"""

# Runs in the guest as root once the unit is up.
GUEST = r"""
import json, os, socket, subprocess, sys, time
sys.path.insert(0, "/opt/icvq-drm")
out = {}
sock = "/run/icvq-drm/sampler.sock"
for _ in range(600):
    if os.path.exists(sock):
        break
    time.sleep(0.1)
show = subprocess.run(["systemctl", "show", "icvq-drm-sampler.service", "-p", "ActiveState,User,MainPID"],
                      capture_output=True, text=True).stdout
out["show"] = dict(l.split("=", 1) for l in show.split())
out["journal"] = subprocess.run(["journalctl", "-u", "icvq-drm-sampler", "--no-pager", "-o", "cat"],
                                capture_output=True, text=True).stdout[-3000:]
if not os.path.exists(sock):
    out["debug"] = subprocess.run("ls -l /dev/dri; id icvq-drm; getent group video; cat /proc/devices | grep drm",
                                  shell=True, capture_output=True, text=True).stdout
    print("ICVQ-UNIT-RESULT " + json.dumps(out), flush=True)
    sys.exit(0)
pid = out["show"].get("MainPID", "0")
status = open(f"/proc/{pid}/status").read() if pid != "0" else ""
out["cap_eff"] = next((l.split()[1] for l in status.splitlines() if l.startswith("CapEff:")), "")
out["socket_mode"] = oct(os.stat(sock).st_mode & 0o777)
out["dir_mode"] = oct(os.stat(os.path.dirname(sock)).st_mode & 0o777)
req = json.dumps({"v": 1, "regions": [[0, 0, 64, 32]]})
def ask(user, group):
    code = ("import socket,sys; s=socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET); s.connect(sys.argv[1]); "
            "s.send(sys.argv[2].encode()); print(s.recv(65536).decode())")
    cmd = [sys.executable, "-c", code, sock, req]
    if user:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups", "--no-new-privs"] + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return {"rc": p.returncode, "out": p.stdout.strip(), "err": p.stderr.strip()[-300:]}
out["as_agent_user"] = ask("icvq", "icvq")
out["as_nobody"] = ask("nobody", "nogroup")
# The agent's unprivileged side, as user icvq with group video (the agent unit's SupplementaryGroups).
code = ("import sys; sys.path.insert(0, '/opt/icvq-drm'); from agent.probes.display import drm; "
        "fd = drm.open_card('/dev/dri/card0'); p = drm.PropertyNames(); "
        "pl = drm.primary_planes(fd, p)[0]; c = drm.get_crtc(fd, pl.crtc_id, p); "
        "import json; print(json.dumps({'fb_id': pl.fb_id, 'active': c.active, 'w': c.width}))")
p = subprocess.run(["setpriv", "--reuid=icvq", "--regid=icvq", "--init-groups", "--no-new-privs",
                    sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
out["agent_side"] = {"rc": p.returncode, "out": p.stdout.strip(), "err": p.stderr.strip()[-300:]}
print("ICVQ-UNIT-RESULT " + json.dumps(out), flush=True)
"""


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if not PYTHON.is_file():
        pytest.fail(f"{PYTHON} missing: the service needs a system Python outside /root (`make deps`)")
    tmp = tmp_path_factory.mktemp("drm-unit-vm")
    ov = tmp / "overlay"
    units = ov / "etc" / "systemd" / "system"
    (units / "icvq-drm-sampler.service.d").mkdir(parents=True)
    shutil.copy2(SYSTEMD / "icvq-drm-sampler.service", units / "icvq-drm-sampler.service")
    (units / "icvq-drm-sampler.service.d" / "vm-test.conf").write_text(DROPIN)
    (units / "icvq-test-drmperm.service").write_text(DRM_PERMS)
    sysusers = ov / "usr" / "lib" / "sysusers.d"
    sysusers.mkdir(parents=True)
    shutil.copy2(SYSTEMD / "icvq.sysusers", sysusers / "icvq.conf")
    shutil.copy2(SYSTEMD / "icvq-drm-sampler.sysusers", sysusers / "icvq-drm.conf")
    shutil.copytree(REPO / "agent", ov / "opt" / "icvq-drm" / "agent",
                    ignore=shutil.ignore_patterns("__pycache__"))
    script = tmp / "guest.py"
    script.write_text(GUEST)
    try:
        res = run_in_vm([str(PYTHON), str(script)], systemd=True, overlay_dir=ov, cwd=tmp, rw_dirs=[tmp],
                        units=["icvq-test-drmperm.service", "icvq-drm-sampler.service"], vcan=0, timeout_s=240,
                        devices=["bochs-display,xres=1024,yres=768"], modules=["bochs"])
    except VmError as e:
        pytest.fail(f"the tools/vm guest could not run; run `make deps`: {e}", pytrace=False)
    lines = [ln for ln in res.output.splitlines() if ln.startswith(MARK)]
    assert res.returncode == 0 and lines, f"rc {res.returncode}:\n{res.output[-3000:]}\n{res.console[-3000:]}"
    out = dict(json.loads(lines[-1][len(MARK):]))
    assert "socket_mode" in out, \
        f"the helper's socket never appeared; journal:\n{out['journal']}\n{out['show']}\n{out.get('debug')}"
    return out


def test_unit_runs_as_its_own_user_with_only_cap_sys_admin(guest: dict[str, Any]) -> None:
    assert guest["show"]["ActiveState"] == "active" and guest["show"]["User"] == "icvq-drm"
    assert int(guest["cap_eff"], 16) == 1 << 21   # CAP_SYS_ADMIN is bit 21, nothing else
    assert guest["socket_mode"] == "0o660" and guest["dir_mode"] == "0o750"


def test_helper_samples_the_scanout_inside_its_sandbox(guest: dict[str, Any]) -> None:
    r = guest["as_agent_user"]
    assert r["rc"] == 0, r
    answer = json.loads(r["out"])
    assert answer["ok"] is True and answer["width"] == 1024 and answer["height"] == 768, answer
    assert answer["format"] in ("XR24", "AR24") and len(answer["regions"]) == 1


def test_socket_refuses_users_outside_the_group(guest: dict[str, Any]) -> None:
    assert guest["as_nobody"]["rc"] != 0 and "ermission" in guest["as_nobody"]["err"]


def test_agent_side_needs_no_capability(guest: dict[str, Any]) -> None:
    r = guest["agent_side"]
    assert r["rc"] == 0, r
    state = json.loads(r["out"])
    assert state["fb_id"] > 0 and state["active"] is True and state["w"] == 1024
