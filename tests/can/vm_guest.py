"""Runs INSIDE the test guest (tools/vm): every SocketCAN scenario in one boot, results as one JSON line.

Real parts only: vcan0/vcan1, the kernel's raw and BCM sockets, can-utils (canplayer replays the traffic,
candump records the wire, cansend injects a CAN FD frame), real opendbc DBCs. The host side
(test_can_vm.py) asserts on the JSON. Timeline, in seconds from the start of the replay:

The replay starts once the probe has its sockets open (an emulated guest can take a second for that);
the sensors may time out as "never seen" while canplayer starts, which the host side ignores. Timeouts
are generous (0.5-0.6 s) because an emulated guest on a busy host can stall canplayer for a few cycles.

  vcan0 "chassis" (FORD_CADS.dbc): radar MRR_Status_Radar every 30 ms (BCM mode), silent [1.0, 2.0),
      CAN_BLOCKAGE_MNR set [2.6, 3.2), one 6-byte radar frame at 0.5; error frames 3.5 bus-off,
      4.0 restarted, 4.2 error-passive, 4.4 back to error-active; 500 frames/s of other ids.
  vcan1 "adas" (tesla_can.dbc, MTU 72 but a classic bus): DAS_status2 every 40 ms (raw mode, alive counter
      DAS_status2Counter) with two frames skipped at 1.5, PMM_RADAR_BLOCKED_FRONT [2.0, 2.5), silent
      [3.0, 4.0); a P01-protected camera frame 0x7A0 every 20 ms with CRCs corrupted at 1.2 and 1.26, a
      4-byte 0x7A0 at 0.9 and a CAN FD 0x7A0 at 0.8; 500 frames/s of other ids.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

from canhelp import FORD, TESLA, VSS_FRONT, agent_config, can_section, radar_frame, tesla_status2  # noqa: E402

from agent.clock import SystemClock  # noqa: E402
from agent.probe import ProbeContext  # noqa: E402
from agent.probes.can import build  # noqa: E402
from agent.probes.can.e2e import E2ESpec, protect  # noqa: E402
from agent.probes.can.sockets import TX_SEND, BcmSocket, RawReader, TransmitRefused, _BcmHead  # noqa: E402
from agent.records import Record  # noqa: E402

WORK = Path("/tmp/can-vm")
CAM = E2ESpec("P01", 0x0321)
END_S = 5.0
ERROR_FRAMES = [(3.5, 0x040, b""), (4.0, 0x100, b""), (4.2, 0x004, bytes([0, 0x10])), (4.4, 0x004, bytes([0, 0x40]))]


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def tx_packets(ifname: str) -> int:
    return int(Path(f"/sys/class/net/{ifname}/statistics/tx_packets").read_text())


def tesla_frame(counter: int, radar_fault: int) -> bytes:
    m = tesla_status2()
    values = {s.name: 0 for s in m.signals} | {"DAS_status2Counter": counter & 15,
                                                "DAS_pmmRadarFaultReason": radar_fault}
    return bytes(m.encode(values, strict=False))


def build_log() -> tuple[list[str], dict[str, int]]:
    """The canplayer log (relative timestamps) and how many frames each interface will carry."""
    rnd = random.Random(7)
    lines: list[tuple[float, str]] = []
    counts = {"vcan0": 0, "vcan1": 0}

    def add(t: float, ifname: str, text: str) -> None:
        lines.append((t, f"({100 + t:.6f}) {ifname} {text}"))
        counts[ifname] += 1

    t = 0.0
    while t < END_S:  # radar
        if not 1.0 <= t < 2.0:
            add(t, "vcan0", f"101#{radar_frame(blocked=int(2.6 <= t < 3.2)).hex().upper()}")
        t = round(t + 0.03, 6)
    add(0.5, "vcan0", f"101#{radar_frame().hex().upper()[:12]}")
    t, ctr = 0.0, 0
    while t < END_S:  # DAS_status2
        if abs(t - 1.52) < 0.001:
            ctr += 2  # two frames lost upstream
        if not 3.0 <= t < 4.0:
            add(t, "vcan1", f"389#{tesla_frame(ctr, int(2.0 <= t < 2.5)).hex().upper()}")
        ctr += 1
        t = round(t + 0.04, 6)
    t, ctr = 0.0, 0
    while t < END_S:  # camera with E2E P01
        frame = bytearray(protect(CAM, bytes([0, 0, 0xA5, 0, 0, 0, 0, 0]), ctr % 15))
        if abs(t - 1.2) < 0.001 or abs(t - 1.26) < 0.001:
            frame[6] ^= 0x10
        add(t, "vcan1", f"7A0#{frame.hex().upper()}")
        ctr += 1
        t = round(t + 0.02, 6)
    add(0.9, "vcan1", "7A0#01020304")
    others = [i for i in range(0x200, 0x700) if i not in (0x389, 0x7A0)]
    for ifname in ("vcan0", "vcan1"):
        for i in range(int(END_S * 500)):
            add(i / 500 + 0.0007, ifname, f"{rnd.choice(others):03X}#{rnd.randbytes(8).hex().upper()}")
    lines.sort()
    return [line for _, line in lines], counts


def error_frame_sender(t0: float) -> None:
    s = socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW)
    s.bind(("vcan0",))
    for at, cls, data in ERROR_FRAMES:
        time.sleep(max(0.0, t0 + at - time.monotonic()))
        s.send(struct.pack("=IB3x8s", 0x20000000 | cls, 8, data.ljust(8, b"\0")))
    s.close()


class SendSpy:
    """Records every socket write made by the probe's thread (the test's own injections are elsewhere)."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self._orig = {n: getattr(socket.socket, n) for n in ("send", "sendall", "sendto", "sendmsg")}

    def install(self) -> None:
        for name, fn in self._orig.items():
            def wrapper(sock: socket.socket, *a: Any, _fn: Any = fn, _name: str = name, **kw: Any) -> Any:
                if threading.current_thread().name.startswith("probe-"):
                    data = bytes(a[0]) if a and isinstance(a[0], (bytes, bytearray)) else b""
                    self.calls.append({"call": _name, "proto": sock.proto, "type": int(sock.type),
                                       "opcode": struct.unpack_from("=I", data)[0] if len(data) >= 4 else None})
                return _fn(sock, *a, **kw)
            setattr(socket.socket, name, wrapper)

    def remove(self) -> None:
        for name, fn in self._orig.items():
            setattr(socket.socket, name, fn)


def check_fallback_reader() -> dict[str, Any]:
    """The recvmsg fallback and the recvmmsg batch reader deliver the same frames."""
    a = RawReader("vcan1", [(0x7A0, 0x7FF | 0xC0000000)], error_frames=False)
    b = RawReader("vcan1", [(0x7A0, 0x7FF | 0xC0000000)], error_frames=False, batch=False)
    for i in range(5):
        sh("cansend", "vcan1", f"7A0#{i:02X}11")
    sh("cansend", "vcan1", "7A0##1" + "AB" * 12)
    time.sleep(0.2)

    def frames(r: RawReader) -> list[Any]:
        classic, fd = r.read()
        return [(f[0], f[1], bytes(f[2][:f[1]]).hex()) for f in classic] + [(f[0], f[1], f[2].hex()) for f in fd]

    out = {"batched": a.batched, "fast": frames(a), "slow": frames(b), "slow_batched": b.batched}
    a.close()
    b.close()
    return out


def check_bcm_guard() -> str:
    bcm = BcmSocket("vcan0")
    h = _BcmHead()
    h.opcode = TX_SEND
    try:
        bcm._write(h, bytes(16))
        return "sent"
    except TransmitRefused as e:
        return f"refused: {e}"
    finally:
        bcm.close()


def main() -> int:
    WORK.mkdir(parents=True, exist_ok=True)
    for cmd in (["ip", "link", "set", "vcan1", "down"], ["ip", "link", "set", "vcan1", "mtu", "72"],
                ["ip", "link", "set", "vcan1", "up"]):
        sh(*cmd)
    log_lines, injected = build_log()
    (WORK / "replay.log").write_text("\n".join(log_lines) + "\n")
    cfg = agent_config(can_section(
        [{"name": "chassis", "channel": "vcan0", "dbc": FORD}, {"name": "adas", "channel": "vcan1", "dbc": TESLA}],
        [{"name": "mrr", "bus": "chassis", "message": "MRR_Status_Radar", "mode": "bcm", "timeout_ms": 600,
          "status": [{"signal": "CAN_BLOCKAGE_MNR", "fault_when": "== 1", "vss": VSS_FRONT}]},
         {"name": "das", "bus": "adas", "message": "DAS_status2", "cycle_ms": 40, "timeout_ms": 600,
          "counter": {"signal": "DAS_status2Counter"},
          "status": [{"signal": "DAS_pmmRadarFaultReason",
                      "fault_when": "in 'PMM_RADAR_BLOCKED_FRONT', 'PMM_RADAR_INVALID_MIA'"}]},
         {"name": "cam", "bus": "adas", "id": 0x7A0, "cycle_ms": 20, "timeout_ms": 500, "length": 8,
          "e2e": {"profile": "P01", "data_id": 0x0321}}],
        interval_s=1.0, read_interval_ms=50)).probes["can"]
    records: list[Record] = []
    spy = SendSpy()
    spy.install()
    candump = subprocess.Popen(["candump", "-L", "vcan0", "vcan1"], stdout=(WORK / "wire.log").open("w"))
    time.sleep(0.3)
    tx0 = {i: tx_packets(i) for i in ("vcan0", "vcan1")}
    clock = SystemClock()
    [probe] = build(cfg, ProbeContext(clock=clock, emit=records.append))
    probe.start()
    deadline = time.monotonic() + 20
    while not all(b["open"] for b in probe.status().get("buses", {}).values()) and time.monotonic() < deadline:
        time.sleep(0.02)
    t0 = time.monotonic()
    t0_mono = clock.mono()
    player = subprocess.Popen(["canplayer", "-I", str(WORK / "replay.log")])
    err = threading.Thread(target=error_frame_sender, args=(t0,))
    err.start()
    time.sleep(max(0.0, t0 + 0.8 - time.monotonic()))
    sh("cansend", "vcan1", "7A0##0" + "00" * 12)  # CAN FD frame on the classic adas bus
    player.wait(60)
    err.join()
    end_mono = clock.mono()
    time.sleep(1.2)  # close one more window
    probe.stop()
    spy.remove()
    time.sleep(0.2)
    candump.terminate()
    candump.wait(5)
    tx1 = {i: tx_packets(i) for i in ("vcan0", "vcan1")}
    wire = [ln for ln in (WORK / "wire.log").read_text().splitlines() if ln.strip()]
    result = {
        "t0_ms": t0_mono * 1000, "end_ms": end_mono * 1000, "status": probe.status(),
        "records": [{"kind": r.kind.label, "name": r.name, "mono_ms": r.mono_ms, "episode": r.episode,
                     "data": r.data} for r in records],
        "injected": {"vcan0": injected["vcan0"] + len(ERROR_FRAMES), "vcan1": injected["vcan1"] + 1},
        "injected_data_frames": injected["vcan0"] + injected["vcan1"] + 1,
        "radar_frames": sum(" vcan0 101#" in ln for ln in log_lines),
        "tx_delta": {i: tx1[i] - tx0[i] for i in tx0}, "wire_frames": len(wire),
        "probe_sends": spy.calls, "error_frames": len(ERROR_FRAMES),
        "fallback": check_fallback_reader(), "bcm_guard": check_bcm_guard(),
    }
    print("ICVQ-CAN-RESULT " + json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
