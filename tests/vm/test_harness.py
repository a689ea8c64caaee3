"""The tools/vm guest really has SocketCAN: vcan, raw sockets, python-can, CAN_BCM; exit codes and systemd.

These tests boot qemu. They fail (never skip) when the harness cannot run: a missing qemu is a
broken test environment, not a reason to pass.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tools.vm import VmResult, VmTimeout, run_in_vm

pytestmark = pytest.mark.vm

# One boot runs every socket check and reports JSON; each check records its error instead of
# aborting, so one failure does not hide the others.
GUEST_CHECKS = textwrap.dedent(
    """
    import json, socket, struct, subprocess, traceback

    FRAME = "=IB3x8s"  # struct can_frame
    BCM_HEAD = "@3I4l2I0q"  # struct bcm_msg_head, native alignment
    results = {}

    def check(name):
        def wrap(fn):
            try:
                results[name] = {"ok": True, "value": fn()}
            except Exception:
                results[name] = {"ok": False, "error": traceback.format_exc()}
        return wrap

    def raw_socket(timeout=5.0):
        s = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
        s.bind(("vcan0",))
        s.settimeout(timeout)
        return s

    @check("ip_link")
    def _():
        out = subprocess.run(["ip", "-j", "link", "show", "vcan0"], capture_output=True, text=True, check=True)
        return json.loads(out.stdout)

    @check("raw")
    def _():
        tx, rx = raw_socket(), raw_socket()
        tx.send(struct.pack(FRAME, 0x123, 4, bytes.fromhex("deadbeef")))
        can_id, dlc, data = struct.unpack(FRAME, rx.recv(16))
        return {"id": can_id, "data": data[:dlc].hex()}

    @check("python_can")
    def _():
        import can
        with can.Bus(interface="socketcan", channel="vcan0") as tx, \\
                can.Bus(interface="socketcan", channel="vcan0") as rx:
            tx.send(can.Message(arbitration_id=0x18FEF100, is_extended_id=True, data=[1, 2, 3]))
            msg = rx.recv(5.0)
        return None if msg is None else {
            "id": msg.arbitration_id, "extended": msg.is_extended_id, "data": msg.data.hex(),
            "channel": msg.channel,
        }

    @check("bcm")
    def _():
        rx = raw_socket()
        bcm = socket.socket(socket.AF_CAN, socket.SOCK_DGRAM, socket.CAN_BCM)
        bcm.connect(("vcan0",))
        frame = struct.pack(FRAME, 0x321, 2, bytes.fromhex("cafe"))
        bcm.send(struct.pack(BCM_HEAD, socket.CAN_BCM_TX_SEND, 0, 0, 0, 0, 0, 0, 0x321, 1) + frame)
        can_id, dlc, data = struct.unpack(FRAME, rx.recv(16))
        return {"id": can_id, "data": data[:dlc].hex()}

    print(json.dumps(results))
    """
)


def _vm_run(cmd: list[str], **kwargs: Any) -> VmResult:
    return run_in_vm(cmd, timeout_s=240, **kwargs)


@pytest.fixture(scope="module")
def guest_checks() -> dict[str, Any]:
    res = _vm_run([sys.executable, "-c", GUEST_CHECKS])
    assert res.returncode == 0, res.output
    # The whole output must parse: proves kernel/console noise never reaches the command output.
    data: dict[str, Any] = json.loads(res.output)
    return data


def _value(checks: dict[str, Any], name: str) -> Any:
    entry = checks[name]
    assert entry["ok"], f"guest check {name} failed:\n{entry.get('error')}"
    return entry["value"]


def test_vcan0_exists_and_is_up(guest_checks: dict[str, Any]) -> None:
    (link,) = _value(guest_checks, "ip_link")
    assert link["ifname"] == "vcan0"
    assert link["link_type"] == "can"
    assert "UP" in link["flags"]


def test_raw_af_can_socket_roundtrip(guest_checks: dict[str, Any]) -> None:
    assert _value(guest_checks, "raw") == {"id": 0x123, "data": "deadbeef"}


def test_python_can_socketcan_roundtrip(guest_checks: dict[str, Any]) -> None:
    msg = _value(guest_checks, "python_can")
    assert msg == {"id": 0x18FEF100, "extended": True, "data": "010203", "channel": "vcan0"}


def test_can_bcm_connects_and_sends(guest_checks: dict[str, Any]) -> None:
    assert _value(guest_checks, "bcm") == {"id": 0x321, "data": "cafe"}


def test_exit_code_output_and_rw_share(tmp_path: Path) -> None:
    script = "echo to-stdout; echo to-stderr >&2; echo written > result.txt; exit 3"
    res = _vm_run(["sh", "-c", script], cwd=tmp_path, rw_dirs=[tmp_path])
    assert res.returncode == 3
    assert res.output.splitlines() == ["to-stdout", "to-stderr"]
    assert (tmp_path / "result.txt").read_text() == "written\n"


def test_timeout_raises(tmp_path: Path) -> None:
    with pytest.raises(VmTimeout):
        run_in_vm(["sh", "-c", "echo started; sleep 600"], timeout_s=8, cwd=tmp_path, rw_dirs=[tmp_path])


def test_systemd_mode_runs_unit_then_command(tmp_path: Path) -> None:
    units = tmp_path / "overlay" / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    (units / "hello.service").write_text(
        "[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStart=/bin/sh -c 'cat /proc/1/comm > /run/hello.txt'\n"
    )
    res = _vm_run(
        ["sh", "-c", "systemctl is-active hello.service && cat /run/hello.txt"],
        systemd=True,
        overlay_dir=tmp_path / "overlay",
        units=["hello.service"],
        cwd=tmp_path,
        rw_dirs=[tmp_path],
    )
    assert (res.returncode, res.output.split()) == (0, ["active", "systemd"])
