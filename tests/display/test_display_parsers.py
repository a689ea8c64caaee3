"""Parsers and readers of the display signals: kmsg, hang patterns, heartbeat, XWD/fbdev geometry, sysfs,
process states, and the config surface."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from agent.config import from_mapping
from agent.errors import ConfigError
from agent.probes.display import Config, PatternConfig, RegionConfig
from agent.probes.display.framebuffer import (
    FrameUnavailable,
    fbdev_layout,
    looks_like_xwd,
    make_xwd_header,
    parse_xwd,
)
from agent.probes.display.heartbeat import HeartbeatState, parse_heartbeat
from agent.probes.display.hmi_process import classify, name_matches
from agent.probes.display.kmsg import KmsgReader, parse_record
from agent.probes.display.patterns import compile_patterns, match_line
from agent.probes.display.sysfs import BacklightReading, SysfsReader
from agent.schema import build

# Lines as the drivers print them (format strings from drivers/gpu/drm/**), with their dev_printk prefixes.
HANG_LINES = [
    ("drm", "flip_done_timeout",
     "[drm:drm_atomic_helper_wait_for_flip_done [drm_kms_helper]] *ERROR* [CRTC:51:crtc-0] flip_done timed out"),
    ("drm", "hw_done_timeout",
     "[drm:drm_atomic_helper_wait_for_dependencies [drm_kms_helper]] *ERROR* [CRTC:38:crtc-0] hw_done timed out"),
    ("drm", "commit_wait_timeout",
     "[drm:drm_atomic_helper_wait_for_dependencies] *ERROR* [PLANE:31:plane-0] commit wait timed out"),
    ("drm", "vblank_wait_timeout", "[drm:drm_wait_one_vblank] *ERROR* vblank wait timed out on crtc 0"),
    ("etnaviv", "recover_hung_gpu", "etnaviv-gpu 130000.gpu: recover hung GPU!"),
    ("panfrost", "sched_timeout", "panfrost ff9a0000.gpu: gpu sched timeout, js=1, config=0x7300, status=0x8, "
                                  "head=0x2ee5c00, tail=0x2ee5c00, sched_job=00000000c7a0b5ab"),
    ("panfrost", "js_fault", "panfrost ff9a0000.gpu: js fault, js=0, status=INSTR_INVALID_ENC, head=0x1, tail=0x1"),
    ("lima", "job_timeout", "lima 1c40000.gpu: lima job timeout"),
    ("msm", "hangcheck", "msm ae00000.mdss: [drm:hangcheck_handler] *ERROR* A630: hangcheck detected gpu lockup rb 0!"),
    ("msm_dpu", "frame_done_timeout", "[drm:dpu_encoder_frame_done_timeout:2128] [dpu error]enc31 frame done timeout"),
    ("msm_dpu", "vblank_timeout", "[drm:dpu_encoder_phys_vid_wait_for_commit_done:488] [dpu error]vblank timeout"),
    ("i915", "gpu_hang", "i915 0000:00:02.0: [drm] GPU HANG: ecode 9:1:85dffffb, in Xorg [1086]"),
    ("amdgpu", "ring_timeout",
     "[drm:amdgpu_job_timedout [amdgpu]] *ERROR* ring gfx timeout, signaled seq=123, emitted seq=125"),
    ("mali_kbase", "job_hard_stopped", "mali 13000000.mali: JS: Job Hard-Stopped (took more than 50 ticks)"),
    ("mali_kbase", "gpu_reset", "mali 13000000.mali: Resetting GPU (allowing up to 500 ms)"),
]


@pytest.mark.parametrize(("driver", "name", "line"), HANG_LINES, ids=[f"{d}-{n}" for d, n, _ in HANG_LINES])
def test_builtin_hang_patterns(driver: str, name: str, line: str) -> None:
    m = match_line(compile_patterns(), line)
    assert m is not None and (m.driver, m.pattern) == (driver, name)


@pytest.mark.parametrize("line", [
    "usb 1-1: new high-speed USB device number 2 using xhci_hcd",
    "[drm] Initialized panfrost 1.2.0 20180908 for ff9a0000.gpu on minor 1",
    "EXT4-fs (mmcblk0p2): mounted filesystem with ordered data mode",
])
def test_ordinary_lines_do_not_match(line: str) -> None:
    assert match_line(compile_patterns(), line) is None


def test_device_prefix_and_extra_patterns() -> None:
    pats = compile_patterns([("vendor_gpu", "", r"vgpu: watchdog bite \d+")])
    m = match_line(pats, "panfrost ff9a0000.gpu: gpu sched timeout, js=1")
    assert m and m.device == "panfrost ff9a0000.gpu"
    m = match_line(pats, "vgpu: watchdog bite 3")
    assert m and (m.driver, m.pattern) == ("vendor_gpu", "extra0")


def test_parse_kmsg_record() -> None:
    r = parse_record(b"3,1043,94536178,-;etnaviv-gpu 130000.gpu: recover hung GPU!")
    assert r and (r.prio, r.level, r.seq, r.usec) == (3, 3, 1043, 94536178)
    assert r.text == "etnaviv-gpu 130000.gpu: recover hung GPU!"
    assert parse_record(b"6,12,5,c,more;text") is not None  # flags may hold several characters
    for bad in (b"garbage", b"3,x,1,-;t", b"3,1,2;no flags field", b""):
        assert parse_record(bad) is None


def scripted_read(chunks: list[bytes | int]) -> Callable[[int, int], bytes]:
    """A read() that returns the chunks in order; an int raises that errno; then EAGAIN."""
    it = iter(chunks)

    def read(_fd: int, _n: int) -> bytes:
        c = next(it, None)
        if c is None:
            raise BlockingIOError(errno.EAGAIN, "again")
        if isinstance(c, int):
            raise OSError(c, "scripted")
        return c
    return read


def test_kmsg_reader_counts_gaps_epipe_and_malformed(tmp_path: Path) -> None:
    f = tmp_path / "kmsg"
    f.write_bytes(b"")
    reader = KmsgReader(str(f), read=scripted_read([
        b"6,10,100,-;first\n",
        b" SUBSYSTEM=drm\n DEVICE=+drm:card0\n",       # continuation lines are metadata, not records
        errno.EPIPE,                                    # the ring buffer overwrote records 11..14
        b"6,15,200,-;after the overrun\n",
        b"not a kmsg line\n",
        b"6,16,300,-;split ac", b"ross reads\n",       # a FIFO may split a record
        b"6,3,400,-;replay restarted\n",
    ]))
    reader.open()
    recs = reader.read()
    assert [r.text for r in recs] == ["first", "after the overrun", "split across reads", "replay restarted"]
    assert (reader.overruns, reader.lost, reader.malformed, reader.seq_resets) == (1, 4, 1, 1)
    reader.close()


def test_kmsg_reader_raises_other_errors(tmp_path: Path) -> None:
    f = tmp_path / "kmsg"
    f.write_bytes(b"")
    reader = KmsgReader(str(f), read=scripted_read([errno.EIO]))
    reader.open()
    with pytest.raises(OSError):
        reader.read()
    reader.close()


@pytest.mark.parametrize(("payload", "frames", "anim", "screen"), [
    (b"42", 42, True, None),
    (b"42\n", 42, True, None),
    (b"7 anim=0", 7, False, None),
    (b"7 anim=1 screen=0", 7, True, False),
    (b"7 screen=1 future=thing", 7, True, True),
])
def test_parse_heartbeat(payload: bytes, frames: int, anim: bool, screen: bool | None) -> None:
    hb = parse_heartbeat(payload)
    assert (hb.frames, hb.animating, hb.screen_on) == (frames, anim, screen)


@pytest.mark.parametrize("payload", [b"", b"  ", b"abc", b"-1", b"1 anim=2", b"1 anim", b"\xff\xfe",
                                     b"99999999999999999999999"])
def test_parse_heartbeat_rejects(payload: bytes) -> None:
    with pytest.raises((ValueError, UnicodeDecodeError)):
        parse_heartbeat(payload)


def test_heartbeat_state_tracks_advance_and_restart() -> None:
    st = HeartbeatState()
    assert st.update(parse_heartbeat(b"10"), 1.0)
    assert not st.update(parse_heartbeat(b"10"), 2.0)
    assert (st.last_rx, st.last_advance) == (2.0, 1.0)
    assert st.update(parse_heartbeat(b"3 screen=0"), 3.0)  # HMI restarted: counter went back
    assert st.counter_resets == 1 and st.screen_on is False


def test_xwd_header_round_trip_and_detection() -> None:
    head = make_xwd_header(1280, 720)
    assert looks_like_xwd(head)
    lay = parse_xwd(head, len(head) + 1280 * 720 * 4)
    assert (lay.kind, lay.width, lay.height, lay.stride, lay.bits_per_pixel) == ("xwd", 1280, 720, 5120, 32)
    assert lay.offset == len(head) and lay.channel_bytes() == (2, 1, 0)
    assert not looks_like_xwd(b"\x00" * 100)


@pytest.mark.parametrize(("data", "size", "reason"), [
    (make_xwd_header(64, 32)[:60], 10_000, "malformed"),                     # header cut short
    (make_xwd_header(64, 32), 500, "truncated"),                             # pixels missing
    (b"\x00\x00\x00\x64\x00\x00\x00\x06" + bytes(92), 10_000, "malformed"),   # wrong version
    (make_xwd_header(0, 32), 10_000, "malformed"),                           # empty geometry
])
def test_bad_xwd_headers(data: bytes, size: int, reason: str) -> None:
    with pytest.raises(FrameUnavailable) as e:
        parse_xwd(data, size)
    assert e.value.reason == reason


def write_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text + "\n")


def test_fbdev_layout_from_sysfs(tmp_path: Path) -> None:
    g = "class/graphics/fb0"
    write_tree(tmp_path, {f"{g}/virtual_size": "800,960", f"{g}/bits_per_pixel": "16", f"{g}/stride": "1600",
                          f"{g}/modes": "U:800x480p-60", f"{g}/pan": "0,480"})
    lay = fbdev_layout(str(tmp_path), "fb0")
    assert (lay.width, lay.height, lay.map_rows, lay.bits_per_pixel) == (800, 480, 960, 16)
    assert lay.pan_path.endswith("fb0/pan") and lay.channel_bytes() is None
    with pytest.raises(FrameUnavailable):
        fbdev_layout(str(tmp_path), "fb1")


@pytest.mark.parametrize(("bl_power", "brightness", "actual", "state"), [
    (0, 80, 80, "on"), (4, 80, 80, "off"), (0, 0, 0, "off"), (0, 80, 0, "fault"), (None, 5, None, "on"),
])
def test_backlight_state(bl_power: int | None, brightness: int, actual: int | None, state: str) -> None:
    assert BacklightReading("bl", bl_power, brightness, actual, 255).state == state


def test_sysfs_reader(tmp_path: Path) -> None:
    write_tree(tmp_path, {
        "class/backlight/panel/bl_power": "0", "class/backlight/panel/brightness": "120",
        "class/backlight/panel/actual_brightness": "garbage", "class/backlight/panel/max_brightness": "255",
        "class/drm/card0-DSI-1/status": "connected", "class/drm/card0-DSI-1/enabled": "enabled",
        "class/drm/card0-DSI-1/dpms": "On", "class/drm/card0-HDMI-A-1/status": "disconnected",
        "class/drm/card0/dev": "226:0", "class/drm/version": "drm 1.1.0",
    })
    r = SysfsReader(str(tmp_path))
    (bl,) = r.backlights()
    assert (bl.device, bl.brightness, bl.actual_brightness, bl.state) == ("panel", 120, None, "on")
    assert r.malformed == 1
    conns = {c.name: c.ok for c in r.connectors()}
    assert conns == {"card0-DSI-1": True, "card0-HDMI-A-1": False}
    assert [c.name for c in SysfsReader(str(tmp_path), connector="*DSI*").connectors()] == ["card0-DSI-1"]
    assert SysfsReader(str(tmp_path / "nothing")).backlights() == []


@pytest.mark.parametrize(("status", "cpu", "d_since", "busy_since", "expected"), [
    (psutil.STATUS_SLEEPING, 1.0, None, None, "ok"),
    (psutil.STATUS_STOPPED, 0.0, None, None, "stopped"),
    (psutil.STATUS_ZOMBIE, None, None, None, "exited"),
    (psutil.STATUS_DISK_SLEEP, 0.0, 8.0, None, "ok"),          # 2 s in D: not yet
    (psutil.STATUS_DISK_SLEEP, 0.0, 0.0, None, "blocked_io"),  # 10 s in D
    (psutil.STATUS_RUNNING, 99.0, 0.0, 0.0, "busy"),
    (psutil.STATUS_RUNNING, 99.0, None, 5.0, "ok"),            # pegged for 5 s of 10
])
def test_process_classify(status: str, cpu: float | None, d_since: float | None, busy_since: float | None,
                          expected: str) -> None:
    assert classify(status, cpu, d_since=d_since, busy_since=busy_since, now=10.0, d_state_s=5.0,
                    cpu_pegged_s=10.0) == expected


def test_process_name_matching() -> None:
    assert name_matches("hmi", "hmi", None)
    assert name_matches("com.vendor.cluster.hmi", "com.vendor.clus", None)  # comm is cut at 15 characters
    assert name_matches("python-hmi", "python3", ["/usr/bin/python-hmi", "--x"])
    assert not name_matches("hmi", "bash", ["/bin/bash"])


def test_config_defaults_and_limits() -> None:
    cfg = build(Config, {}, path="probes.display")
    assert not cfg.enabled and cfg.input_timeout_s == 5.0 and cfg.heartbeat_timeout_s == 3.0
    with pytest.raises(ConfigError) as e:
        build(Config, {"extra_patterns": [{"driver": "x", "regex": "ok"}, {"driver": "y", "regex": "(unclosed"}]},
              path="probes.display")
    assert e.value.key == "probes.display.extra_patterns[1].regex"
    with pytest.raises(ConfigError) as e:
        build(Config, {"regions": [{"name": "c", "x": 0, "y": 0, "width": 0, "height": 5}]}, path="probes.display")
    assert e.value.key == "probes.display.regions[0].width"
    with pytest.raises(ConfigError) as e:
        build(Config, {"regions": [{"name": "c", "x": 0, "y": 0, "width": 5, "height": 5}] * 2},
              path="probes.display")
    assert e.value.key == "probes.display.regions[1].name"
    with pytest.raises(ConfigError) as e:
        build(Config, {"fb_format": "png"}, path="probes.display")
    assert e.value.key == "probes.display.fb_format"


def test_probe_is_discovered_by_the_agent_config() -> None:
    cfg = from_mapping({"vehicle": {"id": "V", "device": "hu", "fleet": "f"},
                        "probes": {"display": {"enabled": True, "fb_path": "/dev/fb0"}}})
    assert cfg.probes["display"].enabled and cfg.probes["display"].fb_path == "/dev/fb0"


def test_sample_config_file_is_complete_and_valid() -> None:
    """config/probes/display.toml documents every key, and loads."""
    import dataclasses
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    path = Path(__file__).resolve().parents[2] / "config" / "probes" / "display.toml"
    table = tomllib.loads(path.read_text())["probes"]["display"]
    build(Config, table, path="probes.display")
    text = path.read_text()
    for f in dataclasses.fields(Config):
        assert f"\n{f.name} =" in text, f.name
    for sub in (RegionConfig, PatternConfig):
        for f in dataclasses.fields(sub):
            assert f"\n# {f.name} =" in text, f"{sub.__name__}.{f.name}"
    # The commented examples are valid once uncommented (minus the plain keys they would repeat).
    import re
    examples = "\n".join(line[2:] for line in text.splitlines() if re.match(r"# (\[\[probes|\w+ = )", line))
    extra = tomllib.loads(examples)["probes"]["display"]
    cfg = build(Config, {**table, "regions": [], "extra_patterns": [], **extra}, path="probes.display")
    assert cfg.regions[0].name == "clock" and cfg.extra_patterns[0].driver == "vendor_gpu"


def test_real_dev_kmsg_when_the_machine_has_one() -> None:
    """The real device: every record in the buffer parses; opening at the end returns nothing old. Where
    /dev/kmsg is missing or needs CAP_SYSLOG the reader fails with OSError, which the probe reports as a source
    down (covered in test_display_sources)."""
    reader = KmsgReader("/dev/kmsg", from_start=True)
    try:
        reader.open()
    except OSError:
        return
    try:
        recs = reader.read()
        assert reader.malformed == 0 and all(r.seq >= 0 and 0 <= r.level <= 7 for r in recs)
    finally:
        reader.close()
    tail = KmsgReader("/dev/kmsg")
    tail.open()
    try:
        assert all(r.seq > (recs[-1].seq if recs else -1) for r in tail.read())
    finally:
        tail.close()
