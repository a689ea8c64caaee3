"""The scripted sequence tests/install/test_unit_in_vm.py runs in ONE systemd guest boot, as root.

Usage (in the guest): python3 vm_guest_run.py RESULT.json

The overlay (tests/install/vm_deploy.py) holds the shipped unit, sysusers/tmpfiles files, the test drop-ins,
the agent's venv and a config. This script does the install steps of docs/install.md, starts a broker and a
subscriber on the guest's loopback, then drives the unit through: start -> READY, check unit (sandbox
probes), watchdog kill and restart, stop with flush, broken config. It only observes and records (JSON);
the host test asserts. Each step records its error and the sequence goes on, so one failure does not hide
the others.
"""

from __future__ import annotations

import grp
import json
import os
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

UNIT = "icvq-agent.service"
CHECK_UNIT = "icvq-vmcheck.service"
TTY_NODE = "/dev/icvq-vmtest-ttyS0"  # same device as /dev/ttyS0, owned by icvq (vm_sandbox_check.py opens it)
PIN_UNIT = "icvq-vmpin.service"
TESTDIR = Path("/opt/icvq-vmtest")
PORT = 1883
TOPICS = "icvq/v1/#"
CONTROL_SOCKET = "/run/icvq/control.sock"
SPOOL = "/var/lib/icvq/spool.db"
BROKEN_DROPIN = Path("/etc/icvq/agent.d/99-vmtest-broken.toml")
# A kernel log line the display probe's built-in i915 pattern recognises as a GPU hang.
KMSG_LINE = "<3>i915 0000:00:02.0: [drm] GPU HANG: ecode 9:1:85dffffb, in icvq-vmtest [4242]"
SHOW = ("LoadState", "ActiveState", "SubState", "Result", "StatusText", "MainPID", "NRestarts", "ExecMainStatus",
        "ExecMainCode", "WatchdogUSec")

T0 = time.monotonic()
results: dict[str, Any] = {"steps": {}, "errors": {}}


def now() -> float:
    return round(time.monotonic() - T0, 2)


def step(name: str) -> Callable[[Callable[[], Any]], None]:
    def wrap(fn: Callable[[], Any]) -> None:
        started = time.monotonic()
        try:
            results["steps"][name] = fn()
        except Exception:  # noqa: BLE001 - record and go on with the next step
            results["errors"][name] = traceback.format_exc()
        results.setdefault("timings", {})[name] = round(time.monotonic() - started, 2)

    return wrap


def run(*cmd: str, timeout: float = 120.0) -> dict[str, Any]:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return {"rc": p.returncode, "out": p.stdout.strip(), "err": p.stderr.strip()}


def show(unit: str = UNIT) -> dict[str, str]:
    out = subprocess.run(["systemctl", "show", "-p", ",".join(SHOW), unit], capture_output=True, text=True,
                         check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_for(pred: Callable[[], Any], timeout: float, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def journal(*units: str) -> str:
    args = ["journalctl", "--no-pager", "-o", "short-monotonic"]
    for u in units:
        args += ["-u", u]
    return subprocess.run(args, capture_output=True, text=True).stdout


def control(cmd: str) -> Any:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(10)
        s.connect(CONTROL_SOCKET)
        s.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return json.loads(buf)


def proc_info(pid: int) -> dict[str, Any]:
    fds = {}
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        try:
            fds[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError as e:
            fds[fd] = f"? {e}"
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("Uid", "Gid", "Groups", "CapEff", "CapBnd", "NoNewPrivs", "Seccomp"):
            status[k] = v.strip()
    return {"fds": fds, "status": status}


class Subscriber:
    """Everything the broker delivers on icvq/v1/#, with the guest's monotonic time of arrival."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="vmtest-sub",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_message = self._on_message

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.messages.append({"t": now(), "topic": msg.topic, "retain": bool(msg.retain),
                                  "payload": msg.payload.hex()})

    def start(self) -> None:
        self.client.connect("127.0.0.1", PORT, keepalive=30)
        self.client.subscribe(TOPICS, qos=1)
        self.client.loop_start()

    def count(self, kind: str, since: float = 0.0) -> int:
        with self.lock:
            return sum(1 for m in self.messages if m["topic"].endswith("/" + kind) and m["t"] >= since)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def main(out_path: str) -> None:
    sub = Subscriber()
    broker: subprocess.Popen[bytes] | None = None
    cangens: list[subprocess.Popen[bytes]] = []
    state: dict[str, Any] = {}

    @step("install")
    def _() -> Any:
        # docs/install.md, "Run it under systemd", as written.
        out = {"sysusers": run("systemd-sysusers", "icvq.conf"),
               "tmpfiles": run("systemd-tmpfiles", "--create", "icvq.conf"),
               "config": run("install", "-m", "0640", "-o", "root", "-g", "icvq", str(TESTDIR / "agent.toml"),
                             "/etc/icvq/agent.toml"),
               "reload": run("systemctl", "daemon-reload")}
        out["id"] = run("id", "icvq")["out"]
        owned = TESTDIR / "icvq-owned"  # for the sandbox check: DAC allows, ProtectSystem=strict must not
        owned.mkdir()
        shutil.chown(owned, "icvq", "icvq")
        # For the sandbox check: a node of the serial port the icvq user owns, so file permissions allow the
        # open and only DevicePolicy=closed can refuse it, whatever mode and group the guest's /dev/ttyS0 has.
        os.mknod(TTY_NODE, 0o600 | stat.S_IFCHR, os.stat("/dev/ttyS0").st_rdev)
        shutil.chown(TTY_NODE, "icvq", "icvq")
        os.chmod(TTY_NODE, 0o600)
        out["stat"] = run("stat", "-c", "%n %a %U:%G", "/var/lib/icvq", "/etc/icvq", "/etc/icvq/agent.d",
                          "/etc/icvq/agent.toml")["out"].splitlines()
        return out

    @step("broker")
    def _() -> Any:
        nonlocal broker
        conf = Path("/tmp/vmtest-mosquitto.conf")
        conf.write_text(f"user root\npersistence false\nlog_dest stderr\nlistener {PORT} 127.0.0.1\n"
                        "allow_anonymous true\n")
        broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                  stderr=open("/tmp/vmtest-mosquitto.log", "wb"))  # noqa: SIM115
        wait_port(PORT, 15)
        sub.start()
        return {"pid": broker.pid}

    @step("can_traffic")
    def _() -> Any:
        # Two cyclic senders on vcan0 for the agent's CAN probe: 0x123 (raw socket, counting data) and
        # 0x124 (BCM, random data so every frame is a change).
        for args in (["-I", "123", "-L", "8", "-D", "i"], ["-I", "124", "-L", "8", "-D", "r"]):
            cangens.append(subprocess.Popen(["cangen", "vcan0", "-g", "100", *args], stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL))
        time.sleep(0.3)
        return {"running": [p.poll() is None for p in cangens]}

    @step("pin")
    def _() -> Any:
        # Holds ordering references to both units, so systemd does not unload them when they go inactive
        # and `systemctl show` keeps reporting their last run (Result, ExecMainStatus, NRestarts).
        return run("systemctl", "start", PIN_UNIT)

    @step("sandbox_check_started")
    def _() -> Any:
        # Runs with the shipped CPUQuota=20%: mostly waiting on its quota, so it overlaps the agent's start.
        return run("systemctl", "start", "--no-block", CHECK_UNIT)

    @step("start")
    def _() -> Any:
        t = time.monotonic()
        res = run("systemctl", "start", UNIT)  # Type=notify: returns once the agent sent READY=1
        return {"systemctl": res, "start_s": round(time.monotonic() - t, 2), "show": show()}

    @step("connected")
    def _() -> Any:
        ok = wait_for(lambda: " | spool " in show()["StatusText"] and "uplink offline" not in show()["StatusText"]
                      and sub.count("batch") >= 1, 40)
        return {"ok": bool(ok), "show": show(), "batches": sub.count("batch"), "status_msgs": sub.count("status")}

    @step("agent_process")
    def _() -> Any:
        return proc_info(int(show()["MainPID"]))

    @step("kmsg_to_display_probe")
    def _() -> Any:
        # Written as root into the kernel log; the agent can only see it through its fd-0 descriptor.
        since = now()
        with open("/dev/kmsg", "w") as f:
            f.write(KMSG_LINE + "\n")
        status = control("status")
        probes = status.get("status", {}).get("probes", {})
        return {"written_at": since, "display": probes.get("display"), "can": probes.get("can")}

    @step("watchdog")
    def _() -> Any:
        before = show()
        pid = int(before["MainPID"])
        os.kill(pid, 19)  # SIGSTOP: the process is alive but nothing in it turns any more
        t = time.monotonic()
        seen: list[dict[str, Any]] = []
        killed_s: float | None = None

        def restarted() -> bool:
            nonlocal killed_s
            s = show()
            elapsed = round(time.monotonic() - t, 2)
            row: dict[str, Any] = {"t": elapsed, **{k: s[k] for k in
                                                            ("ActiveState", "SubState", "Result", "NRestarts",
                                                             "MainPID")}}
            if not seen or {k: v for k, v in row.items() if k != "t"} != {k: v for k, v in seen[-1].items()
                                                                          if k != "t"}:
                seen.append(row)
            if killed_s is None and not Path(f"/proc/{pid}").exists():
                killed_s = elapsed
            return (int(s["NRestarts"] or 0) >= 1 and s["ActiveState"] == "active" and s["SubState"] == "running"
                    and s["MainPID"] not in ("0", str(pid)))

        ok = wait_for(restarted, 60, every=0.1)
        ready_s = round(time.monotonic() - t, 2)
        since = now()
        reconnected = wait_for(lambda: sub.count("batch", since) >= 1, 30)
        return {"ok": bool(ok), "old_pid": pid, "old_pid_gone": not Path(f"/proc/{pid}").exists(),
                "killed_s": killed_s, "ready_again_s": ready_s, "transitions": seen, "before": before,
                "after": show(), "batch_after_restart": bool(reconnected)}

    @step("stop")
    def _() -> Any:
        # Stop 1.5 s after a batch left: with batch_linger_s = 3 and a sample a second, records are waiting
        # in the spool, so the clean stop has something to flush.
        def pending() -> int:
            text = show()["StatusText"]
            try:
                return int(text.split("spool ", 1)[1].split(" records", 1)[0])
            except (IndexError, ValueError):
                return 0

        n = sub.count("batch")
        wait_for(lambda: sub.count("batch") > n, 15)
        time.sleep(1.5)
        pending_before = pending()
        status_before = show()["StatusText"]
        state["stop_at"] = now()
        t = time.monotonic()
        res = run("systemctl", "stop", UNIT)
        stop_s = round(time.monotonic() - t, 2)
        wait_for(lambda: any(m["topic"].endswith("/status") and m["t"] >= state["stop_at"]
                             for m in sub.messages), 5)
        time.sleep(0.5)
        with sqlite3.connect(f"file:{SPOOL}?mode=ro", uri=True) as db:
            left = {"records": db.execute("SELECT COUNT(*) FROM records").fetchone()[0],
                    "batches": db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]}
        return {"systemctl": res, "stop_s": stop_s, "stop_at": state["stop_at"], "pending_before": pending_before,
                "status_before": status_before, "show": show(), "spool_left": left}

    @step("sandbox_check")
    def _() -> Any:
        done = wait_for(lambda: show(CHECK_UNIT)["ActiveState"] in ("inactive", "failed"), 90)
        report = Path("/run/icvq-vmcheck.json")
        return {"done": bool(done), "show": show(CHECK_UNIT),
                "report": json.loads(report.read_text()) if report.exists() and report.stat().st_size else None}

    @step("broken_config")
    def _() -> Any:
        BROKEN_DROPIN.write_text("[uplink]\nport = 0\n")  # out of range 1..65535
        os.chown(BROKEN_DROPIN, 0, grp.getgrnam("icvq").gr_gid)
        os.chmod(BROKEN_DROPIN, 0o640)
        before_reset = show()
        reset = run("systemctl", "reset-failed", UNIT)  # an operator's clean slate: NRestarts back to 0
        before = show()
        res = run("systemctl", "start", UNIT)
        first = show()
        time.sleep(3.0)  # three times RestartSec=1: a restart loop would have started by now
        return {"before_reset": before_reset, "reset_failed": reset, "before": before, "systemctl": res,
                "first": first, "after": show()}

    for p in cangens:
        p.terminate()
    results["journal"] = journal(UNIT, CHECK_UNIT)[-60000:]
    sub.stop()
    results["messages"] = sub.messages
    if broker is not None:
        broker.terminate()
        broker.wait(10)
    results["uptime_end"] = Path("/proc/uptime").read_text().split()[0]
    results["script_s"] = now()
    Path(out_path).write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
