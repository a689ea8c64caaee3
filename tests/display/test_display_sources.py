"""DisplayProbe with real stand-ins, driven tick by tick on a FakeClock: kmsg and evdev through FIFOs, the
heartbeat through its real Unix socket, a fake sysfs tree, generated XWD frames and a real stopped process."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from display_helpers import fields, poke_pixel, write_xwd

from agent.clock import FakeClock
from agent.probe import ProbeContext
from agent.probes.display import Config, DisplayProbe
from agent.probes.display.evdev import BTN_TOUCH, EV_KEY, EV_SYN, pack_event
from agent.records import Kind, Record
from agent.schema import build


class Rig:
    def __init__(self, tmp: Path, **cfg: Any) -> None:
        self.tmp = tmp
        self.clock = FakeClock()
        self.records: list[Record] = []
        table = {"enabled": True, "sysfs_root": str(tmp / "sys"), "metrics_interval_s": 3600.0, **cfg}
        self.probe = DisplayProbe(build(Config, table, path="probes.display"),
                                  ProbeContext(clock=self.clock, emit=self.records.append))
        self.probe.open()

    def tick(self, seconds: float = 0.0) -> list[Record]:
        self.clock.advance(seconds)
        out = self.probe.tick()
        self.records.extend(out)
        return out

    def run(self, seconds: float, step: float = 0.5) -> list[Record]:
        out = []
        for _ in range(round(seconds / step)):
            out += self.tick(step)
        return out

    def named(self, name: str, kind: Kind | None = None) -> list[Record]:
        return [r for r in self.records if r.name == name and (kind is None or r.kind is kind)]

    @property
    def counters(self) -> dict[str, int]:
        return self.probe.counters.snapshot()


@pytest.fixture
def rigs() -> Iterator[list[Rig]]:
    made: list[Rig] = []
    yield made
    for r in made:
        r.probe.close()


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def write_fifo(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


HANG = b"4,%d,%d,-;panfrost ff9a0000.gpu: gpu sched timeout, js=1, config=0x7300, status=0x8\n"


def test_kmsg_gpu_hang_events_dedupe_and_counters(tmp_path: Path, rigs: list[Rig]) -> None:
    k = fifo(tmp_path / "kmsg")
    rig = Rig(tmp_path, kmsg_path=str(k), gpu_hang_dedupe_s=5.0)
    rigs.append(rig)
    write_fifo(k, b"6,100,1000000,-;usb 1-1: new device\n"
                  b"this line is not kmsg\n"
                  + HANG % (103, 2000000)          # seq 101, 102 lost
                  + b" SUBSYSTEM=platform\n"
                  + HANG % (104, 2100000))         # the same hang again within 5 s: folded
    rig.tick(0.1)
    (ev,) = rig.named("display.gpu_hang")
    assert ev.kind is Kind.EVENT
    assert fields(ev) == {"driver": "panfrost", "pattern": "sched_timeout", "device": "panfrost ff9a0000.gpu",
                       "line": "panfrost ff9a0000.gpu: gpu sched timeout, js=1, config=0x7300, status=0x8",
                       "kernel_s": 2.0, "seq": 103, "level": 4, "repeats_before": 0}
    c = rig.counters
    assert (c["malformed_kmsg"], c["kmsg_lost"], c["gpu_hang_lines"]) == (1, 2, 2)
    rig.tick(6.0)
    write_fifo(k, HANG % (105, 9000000))
    rig.tick(0.1)
    assert [fields(r)["repeats_before"] for r in rig.named("display.gpu_hang")] == [0, 1]


def test_kmsg_source_missing_then_appears(tmp_path: Path, rigs: list[Rig]) -> None:
    k = tmp_path / "kmsg"
    rig = Rig(tmp_path, kmsg_path=str(k), source_retry_s=2.0)
    rigs.append(rig)
    rig.run(3.0)
    assert rig.counters["kmsg_open_failed"] == 1  # counted once, not once per retry
    assert rig.probe.status()["sources"]["kmsg"].startswith("down")
    fifo(k)
    rig.tick(2.0)
    assert rig.probe.status()["sources"]["kmsg"] == "up"
    write_fifo(k, b"3,1,5,-;etnaviv-gpu 130000.gpu: recover hung GPU!\n")
    rig.tick(0.1)
    assert fields(rig.named("display.gpu_hang")[0])["driver"] == "etnaviv"


def touch(dev: Path, split: bool = False) -> None:
    data = pack_event(EV_KEY, BTN_TOUCH, 1, 100, 5) + pack_event(EV_SYN, 0, 0, 100, 5)
    if split:  # a FIFO may deliver half an event; the reader must wait for the rest
        write_fifo(dev, data[:10])
        time.sleep(0.01)
        write_fifo(dev, data[10:])
    else:
        write_fifo(dev, data)


def test_touch_without_redraw_is_a_freeze(tmp_path: Path, rigs: list[Rig]) -> None:
    fb = tmp_path / "Xvfb_screen0"
    write_xwd(fb, 64, 32)
    dev = fifo(tmp_path / "event0")
    rig = Rig(tmp_path, fb_path=str(fb), fb_interval_s=0.5, grid_cols=8, grid_rows=4,
              input_devices=[str(dev)], input_timeout_s=5.0)
    rigs.append(rig)
    rig.run(2.0)
    touch(dev)                                     # answered: the screen changes 1 s later
    rig.run(1.0)
    poke_pixel(fb, 64, 12, 12, (0, 0, 255))
    rig.run(8.0)
    assert rig.named("display.freeze") == []
    touch(dev, split=True)                         # unanswered
    touch(dev)
    rig.run(5.0)
    assert rig.named("display.freeze") == []       # not yet: 5 s is allowed
    rig.run(1.0)
    (begin,) = rig.named("display.freeze", Kind.BEGIN)
    kinds = {e["kind"] for e in fields(begin)["evidence"]}
    assert kinds == {"input_no_redraw", "frame_static"} and fields(begin)["signals"] == ["framebuffer", "input"]
    rig.run(2.0)
    poke_pixel(fb, 64, 20, 20, (255, 0, 0))       # the HMI finally redraws
    rig.tick(0.5)
    (end,) = rig.named("display.freeze", Kind.END)
    assert end.episode == begin.episode and fields(end)["duration_s"] == pytest.approx(8.5, abs=0.51)
    assert rig.counters["input_presses"] == 3


def test_touch_without_any_redraw_signal_is_only_counted(tmp_path: Path, rigs: list[Rig]) -> None:
    dev = fifo(tmp_path / "event0")
    rig = Rig(tmp_path, input_devices=[str(dev)])
    rigs.append(rig)
    touch(dev)
    rig.run(10.0)
    assert rig.named("display.freeze") == [] and rig.counters["input_unmeasurable"] == 1


def send(path: Path, payload: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(payload, str(path))


def test_heartbeat_missing_then_back(tmp_path: Path, rigs: list[Rig]) -> None:
    sock = tmp_path / "hb.sock"
    rig = Rig(tmp_path, heartbeat_socket=str(sock), heartbeat_timeout_s=3.0, metrics_interval_s=4.0)
    rigs.append(rig)
    assert sock.is_socket() and oct(sock.stat().st_mode & 0o777) == "0o660"
    for i in range(4):
        send(sock, b"%d" % (i * 60))
        rig.tick(1.0)
    send(sock, b"hello")
    rig.tick(0.0)
    assert rig.counters["malformed_heartbeat"] == 1
    assert [r.data for r in rig.records if r.name == "display.fps_estimate"] == [45.0]  # 180 frames / 4 s
    rig.run(3.5)                                   # the HMI's event loop is stuck
    (begin,) = rig.named("display.freeze", Kind.BEGIN)
    assert fields(begin)["cause"] == "hmi_deadlock" and fields(begin)["detected_after_s"] == pytest.approx(3.5)
    (unresp,) = rig.named("display.hmi_unresponsive")
    assert fields(unresp)["reason"] == "heartbeat_missing" and fields(unresp)["last_frame"] == 180
    send(sock, b"181")
    rig.tick(0.5)
    (end,) = rig.named("display.freeze", Kind.END)
    assert fields(end)["duration_s"] == pytest.approx(4.0) and fields(end)["signals"] == ["heartbeat"]


def test_frame_counter_stalls(tmp_path: Path, rigs: list[Rig]) -> None:
    sock = tmp_path / "hb.sock"
    rig = Rig(tmp_path, heartbeat_socket=str(sock))
    rigs.append(rig)
    for _ in range(10):                            # heartbeats keep coming, the counter does not move
        send(sock, b"500 anim=1")
        rig.tick(0.5)
    (begin,) = rig.named("display.freeze", Kind.BEGIN)
    assert fields(begin)["cause"] == "render_stall"
    for _ in range(10):                            # a static screen says so: not a freeze
        send(sock, b"500 anim=0")
        rig.tick(0.5)
    assert len(rig.named("display.freeze", Kind.END)) == 1
    assert len(rig.named("display.freeze", Kind.BEGIN)) == 1


def backlight(root: Path, bl_power: int = 0, brightness: int = 100, actual: int = 100) -> None:
    d = root / "class" / "backlight" / "panel"
    d.mkdir(parents=True, exist_ok=True)
    for name, v in (("bl_power", bl_power), ("brightness", brightness), ("actual_brightness", actual),
                    ("max_brightness", 255)):
        (d / name).write_text(f"{v}\n")


def connector(root: Path, status: str = "connected", enabled: str = "enabled", dpms: str = "On") -> None:
    d = root / "class" / "drm" / "card0-DSI-1"
    d.mkdir(parents=True, exist_ok=True)
    for name, v in (("status", status), ("enabled", enabled), ("dpms", dpms)):
        (d / name).write_text(f"{v}\n")


def test_backlight_off_and_fault(tmp_path: Path, rigs: list[Rig]) -> None:
    sysfs = tmp_path / "sys"
    backlight(sysfs)
    connector(sysfs)
    rig = Rig(tmp_path, black_min_s=2.0)
    rigs.append(rig)
    rig.run(3.0)
    backlight(sysfs, bl_power=4)                   # switched off while the screen should be on
    rig.run(3.0)
    (begin,) = rig.named("display.black", Kind.BEGIN)
    assert fields(begin)["cause"] == "backlight_off" and fields(begin)["signals"] == ["backlight"]
    (fault,) = rig.named("display.backlight_fault")
    assert fields(fault)["reason"] == "backlight_off" and fields(fault)["bl_power"] == 4
    assert fields(fault)["black_episode"] == begin.episode
    backlight(sysfs)
    rig.tick(1.0)
    (end,) = rig.named("display.black", Kind.END)
    assert fields(end)["duration_s"] == pytest.approx(4.0, abs=1.01)
    backlight(sysfs, actual=0)                     # commanded 100, the panel reports 0
    rig.run(3.0)
    assert [fields(r)["reason"] for r in rig.named("display.backlight_fault")] == ["backlight_off", "backlight_fault"]
    assert fields(rig.named("display.black", Kind.BEGIN)[-1])["cause"] == "backlight_fault"


def test_black_frame_with_backlight_on_and_connector_enabled(tmp_path: Path, rigs: list[Rig]) -> None:
    sysfs = tmp_path / "sys"
    backlight(sysfs)
    connector(sysfs)
    fb = tmp_path / "Xvfb_screen0"
    write_xwd(fb, 64, 32, rgb=(0, 0, 0))
    rig = Rig(tmp_path, fb_path=str(fb), black_min_s=2.0)
    rigs.append(rig)
    rig.run(3.0)
    (begin,) = rig.named("display.black", Kind.BEGIN)
    assert fields(begin)["cause"] == "black_frame" and fields(begin)["explanation"] == "unknown"
    frame = next(e for e in fields(begin)["evidence"] if e["kind"] == "black_frame")
    assert (frame["backlight"], frame["connector"]) == ("on", "ok")
    connector(sysfs, dpms="Off")
    rig.run(3.0)
    rig.probe.stop()                               # the open episode is closed, not left dangling
    (end,) = rig.named("display.black", Kind.END)
    assert fields(end)["ended_by"] == "agent_stop" and fields(end)["causes"] == ["black_frame", "connector_off"]


def test_framebuffer_gone_and_back(tmp_path: Path, rigs: list[Rig]) -> None:
    fb = tmp_path / "Xvfb_screen0"
    write_xwd(fb, 64, 32)
    rig = Rig(tmp_path, fb_path=str(fb), regions=[
        {"name": "clock", "x": 0, "y": 0, "width": 16, "height": 8, "expected_period_s": 1.0},
        {"name": "elsewhere", "x": 1000, "y": 0, "width": 16, "height": 8}])
    rigs.append(rig)
    for i in range(4):
        poke_pixel(fb, 64, 1, 1, (i * 50, 0, 0))
        rig.tick(0.5)
    assert rig.counters["region_out_of_frame"] == 1
    assert rig.probe.status()["state"] != "degraded"
    fb.unlink()                                    # the X server restarts
    rig.run(10.0)
    assert rig.counters["fb_missing"] == 1 and rig.named("display.freeze") == []
    # Blind while it is gone: the probe says so (the health verdict's "probe display degraded"), naming why.
    st = rig.probe.status()
    assert st["state"] == "degraded" and st["last_error"].startswith("source framebuffer down: ")
    write_xwd(fb, 64, 32)
    rig.tick(0.5)
    assert rig.probe.status()["sources"]["framebuffer"] == "up" and rig.probe.status()["state"] != "degraded"
    rig.run(1.5)
    assert rig.named("display.freeze") == []       # its history restarted with the new frame
    fb.write_bytes(b"\x00\x00")                    # a torn write at startup
    rig.run(1.0)
    assert rig.counters["fb_malformed"] == 1
    rig.run(4.0)
    assert rig.named("display.freeze") == []


@pytest.fixture
def fake_hmi(tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    exe = tmp_path / "icvq-test-hmi"                # a unique process name, so no other process matches
    shutil.copy(shutil.which("sleep") or "/bin/sleep", exe)
    p = subprocess.Popen([str(exe), "60"])
    try:
        yield p
    finally:
        p.kill()
        p.wait()


def wait_status(pid: int, status: str) -> None:
    deadline = time.monotonic() + 5
    while psutil.Process(pid).status() != status:
        assert time.monotonic() < deadline, f"process never became {status}"
        time.sleep(0.01)


def test_hmi_process_stopped_then_gone(tmp_path: Path, rigs: list[Rig], fake_hmi: subprocess.Popen[bytes]) -> None:
    rig = Rig(tmp_path, hmi_processes=["icvq-test-hmi", "never-started-hmi"], process_interval_s=0.5)
    rigs.append(rig)
    rig.run(1.0)
    assert rig.named("display.hmi_unresponsive") == []  # a process never seen is not reported as gone
    fake_hmi.send_signal(signal.SIGSTOP)
    wait_status(fake_hmi.pid, psutil.STATUS_STOPPED)
    rig.run(2.0)
    (ev,) = rig.named("display.hmi_unresponsive")
    assert fields(ev)["reason"] == "stopped" and fields(ev)["pid"] == fake_hmi.pid
    fake_hmi.kill()
    fake_hmi.wait()
    rig.run(2.0)
    assert [fields(r)["reason"] for r in rig.named("display.hmi_unresponsive")] == ["stopped", "not_running"]
