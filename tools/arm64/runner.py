"""`python -m tools.arm64 test`: the agent end to end on an emulated arm64 Python.

config -> system probe -> spool -> MQTT publish to a mosquitto on the HOST loopback (qemu-user shares the
host's network stack) -> decode on the host. The agent runs as `python3.11 -m agent` under
`qemu-aarch64-static -L ROOT`, from the working tree (PYTHONPATH), with Debian's arm64 msgpack/psutil and
pure-Python wheels for paho-mqtt and python-can.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent import wire
from tools.localbroker import Mosquitto

from .cache import ArmError, cache_root
from .rootfs import PYTHON, ensure_rootfs
from .wheels import ensure_site

REPO = Path(__file__).resolve().parents[2]
QEMU = "qemu-aarch64-static"
VEHICLE = ("ARM64SMOKE0001", "hu", "arm64")


@dataclass
class Emulator:
    root: Path
    site: Path
    qemu: str

    def argv(self, *args: str) -> list[str]:
        return [self.qemu, "-L", str(self.root), str(self.root / PYTHON), *args]

    def env(self) -> dict[str, str]:
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER")}
        return {**keep, "PYTHONPATH": f"{self.site}{os.pathsep}{REPO}", "PYTHONUNBUFFERED": "1",
                # Bytecode of the emulated runs lands in the cache, not in the repository's __pycache__.
                "PYTHONPYCACHEPREFIX": str(cache_root() / "pycache"), "PYTHONNOUSERSITE": "1"}


def emulator(log: bool = True) -> Emulator:
    qemu = shutil.which(QEMU)
    if qemu is None:
        raise ArmError(f"{QEMU} not found: run `make deps` (tools/deps/apt-arm64.txt: qemu-user-static)")
    return Emulator(ensure_rootfs(log), ensure_site(log), qemu)


@dataclass
class Subscriber:
    port: int
    messages: list[tuple[float, str, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="arm64-smoke-sub",
                                  protocol=MQTTProtocolVersion.MQTTv5)
        self.client.on_message = self._on_message

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((time.monotonic(), msg.topic, bytes(msg.payload)))

    def start(self) -> Subscriber:
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.subscribe("icvq/v1/#", qos=1)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def decoded(self) -> list[tuple[float, wire.Batch | wire.Status]]:
        with self._lock:
            return [(t, wire.decode(p)) for t, _, p in self.messages]

    def n_batches(self) -> int:
        with self._lock:
            return sum(1 for _, topic, _ in self.messages if topic.endswith("/batch"))


def agent_config(tmp: Path, port: int) -> str:
    vid, dev, fleet = VEHICLE
    return f"""\
[vehicle]
id = "{vid}"
device = "{dev}"
fleet = "{fleet}"

[uplink]
host = "127.0.0.1"
port = {port}
keepalive_s = 10
batch_linger_s = 3.0
backoff_min_s = 0.2
backoff_max_s = 1.0
reconnect_probe_s = 0.5

[spool]
path = "{tmp / 'spool.db'}"
commit_interval_s = 0.2

[history]
path = "{tmp / 'history.db'}"

[control]
socket = "{tmp / 'control.sock'}"
group = ""

[agent]
nice = 0
io_idle = false
health_interval_s = 3

[probes.system]
interval_s = 0.5
"""


class Checks:
    def __init__(self) -> None:
        self.rows: list[tuple[str, bool, str]] = []

    def add(self, name: str, ok: bool, detail: Any = "") -> bool:
        self.rows.append((name, bool(ok), detail if isinstance(detail, str) else json.dumps(detail, default=str)))
        print(f"arm64: {'PASS' if ok else 'FAIL'} {name}{': ' + self.rows[-1][2] if self.rows[-1][2] else ''}",
              flush=True)
        return bool(ok)

    @property
    def failed(self) -> int:
        return sum(1 for _, ok, _ in self.rows if not ok)


def run_test(seconds: float = 10.0, keep: bool = False) -> int:
    started = time.monotonic()
    smoke_s = start_s = stop_s = 0.0
    checks = Checks()
    emu = emulator()
    prepared_s = time.monotonic() - started
    tmp = Path(tempfile.mkdtemp(prefix="icvq-arm64-"))
    broker = Mosquitto(tmp / "broker", persistent=False).start()
    sub = Subscriber(broker.port).start()
    cfg = tmp / "agent.toml"
    cfg.write_text(agent_config(tmp, broker.port))
    log_path = tmp / "agent.log"
    try:
        t = time.monotonic()
        smoke = subprocess.run(emu.argv(str(REPO / "tools" / "arm64" / "smoke.py"), str(cfg)), capture_output=True,
                               text=True, env=emu.env(), cwd=tmp, timeout=300)
        smoke_s = time.monotonic() - t
        report: dict[str, Any] = {}
        if checks.add("smoke.py exits 0", smoke.returncode == 0, smoke.stderr[-2000:]):
            report = json.loads(smoke.stdout)
        for name, entry in report.items():
            checks.add(f"smoke {name}", entry["ok"], entry.get("value", entry.get("error", "")))
        interp = report.get("interpreter", {}).get("value", {})
        checks.add("emulated CPU is aarch64", interp.get("machine") == "aarch64", interp.get("machine"))
        ext = report.get("c_extensions", {}).get("value", {})
        checks.add("msgpack C extension (Debian arm64)", ext.get("msgpack_c") == "msgpack._cmsgpack", ext)

        t = time.monotonic()
        with log_path.open("wb") as log:
            proc = subprocess.Popen(emu.argv("-m", "agent", "--config", str(cfg), "--log-level", "debug"),
                                    stdout=log, stderr=subprocess.STDOUT, env=emu.env(), cwd=tmp)
        try:
            up = _wait(lambda: "icvq-agent 0.1.0 started" in log_path.read_text(errors="replace")
                       or proc.poll() is not None, 120)
            start_s = time.monotonic() - t
            checks.add("agent starts under emulation", up and proc.poll() is None, f"{start_s:.1f} s")
            run_until = time.monotonic() + seconds
            _wait(lambda: proc.poll() is not None, max(0.0, run_until - time.monotonic()))
            # Stop one second after a batch left (batch_linger_s = 3): samples are waiting in the spool, so
            # the SIGTERM flush has something to send.
            n = sub.n_batches()
            _wait(lambda: sub.n_batches() > n or proc.poll() is not None, 15)
            time.sleep(1.0)
            batches_before_stop = sub.n_batches()
            stop_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(60)
            stop_s = time.monotonic() - stop_at
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        checks.add("SIGTERM: agent exits 0", rc == 0, f"rc {rc} after {stop_s:.1f} s")
        time.sleep(0.5)
        _verify(checks, sub.decoded(), batches_before_stop, stop_at, tmp / "spool.db")
    finally:
        sub.stop()
        broker.kill()
    total_s = time.monotonic() - started
    if checks.failed:
        print(f"arm64: agent log ({log_path}):\n" + log_path.read_text(errors="replace")[-4000:], flush=True)
    if not keep and not checks.failed:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"arm64: timings: prepare {prepared_s:.1f} s, smoke.py {smoke_s:.1f} s, agent start "
          f"{start_s:.1f} s, stop {stop_s:.1f} s, total {total_s:.1f} s", flush=True)
    print(f"arm64: {len(checks.rows) - checks.failed} passed, {checks.failed} failed", flush=True)
    return 1 if checks.failed else 0


def _verify(checks: Checks, msgs: Sequence[tuple[float, wire.Batch | wire.Status]], before_stop: int,
            stop_at: float, spool: Path) -> None:
    statuses = [m for _, m in msgs if isinstance(m, wire.Status)]
    batches = [m for _, m in msgs if isinstance(m, wire.Batch)]
    birth = next((s for s in statuses if s.kind == "birth"), None)
    inv = dict(birth.fields.get("inventory", {})) if birth else {}
    checks.add("birth message from aarch64", inv.get("arch") == "aarch64",
               {k: inv.get(k) for k in ("arch", "python", "os")})
    checks.add("batches arrived at the host broker", before_stop >= 2, f"{before_stop} before SIGTERM")
    names = {r.name for b in batches for r in b.records}
    want = {"system.cpu_pct", "system.mem_available_mib", "agent.rss_mib"}
    checks.add("system probe records decode on the host", want <= names, sorted(names)[:12])
    vid, dev, _ = VEHICLE
    checks.add("batch identity", all((b.id.vehicle, b.id.device) == (vid, dev) for b in batches) and bool(batches))
    seqs = sorted({b.id.seq for b in batches})
    checks.add("batch sequence has no gap", bool(seqs) and seqs == list(range(seqs[0], seqs[-1] + 1)), seqs)
    after = [m for t, m in msgs if t >= stop_at]
    last = after[-1] if after else None
    checks.add("final flush, then death with clean=true",
               isinstance(last, wire.Status) and last.kind == "death" and last.fields.get("clean") is True
               and any(isinstance(m, wire.Batch) for m in after),
               [m.kind if isinstance(m, wire.Status) else "batch" for m in after])
    import sqlite3

    with sqlite3.connect(f"file:{spool}?mode=ro", uri=True) as db:
        left = [db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("records", "batches")]
    checks.add("spool empty after stop", left == [0, 0], {"records": left[0], "batches": left[1]})


def _wait(pred: Any, timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(every)


def run_python(args: Sequence[str]) -> int:
    """`python -m tools.arm64 python -- ARGS`: the emulated interpreter with the same environment."""
    emu = emulator()
    return subprocess.run(emu.argv(*args), env=emu.env()).returncode
