"""Plays a link scenario with real parts: the route through gpsfake into a real gpsd, the modem as an AT server
on a pty or as canned mmcli output, and the data path through a callback (tests kill and restart mosquitto) or
a TCP gate (the demo).

Time compression: the route has one NMEA epoch per scenario second and gpsfake writes one sentence every
1 / (speed * 4) s, so gpsd plays `speed` scenario seconds per wall second. The modem and the data path follow
the *scenario clock*, anchored on the TPV times gpsd reports (gpsfake's `-p` pipe), so all tracks stay in step
even when gpsfake starts late or runs slow. `rules(speed)` divides the agent's time thresholds by the same
factor; figures the agent reports are wall seconds, i.e. scenario seconds / speed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.probes.link.settings import RulesConfig

from .modem import AtModemSim, MmcliStub, ModemPoint
from .route import SENTENCES_PER_EPOCH, sample_route, scenario_time, write_nmea
from .scenarios import Scenario

log = logging.getLogger("icvq.sim.link")
WATCH = '?WATCH={"enable":true,"json":true}'


class SimError(RuntimeError):
    pass


# Debian's places, for a PATH without the sbin directories.
FALLBACK = {"gpsfake": "/usr/bin/gpsfake", "gpsd": "/usr/sbin/gpsd"}


def _which(name: str) -> str | None:
    return shutil.which(name) or (FALLBACK[name] if Path(FALLBACK[name]).exists() else None)


def find_gpsfake() -> str:
    exe = _which("gpsfake")
    if exe is None or _which("gpsd") is None:
        raise SimError("gpsfake/gpsd not found: run `make deps` (tools/deps/apt-link.txt: gpsd, gpsd-clients)")
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rules(speed: float, **overrides: float) -> dict[str, float]:
    """The default thresholds with every time (…_s) divided by `speed`."""
    out: dict[str, float] = {}
    for f in dataclasses.fields(RulesConfig):
        v = float(f.default)  # type: ignore[arg-type]
        out[f.name] = v / speed if f.name.endswith("_s") else v
    return {**out, **overrides}


class TcpGate:
    """A TCP listener that the scenario opens and closes: a data path the demo can cut without touching the
    real broker. One thread owns the socket (closing it under another thread's select keeps it listening)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._want = True
        self._applied = threading.Event()
        self._stop = threading.Event()
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="tcp-gate", daemon=True)

    def start(self) -> TcpGate:
        self._thread.start()
        self.set(True)
        return self

    def set(self, up: bool) -> None:
        """Open or close the listener; returns once done."""
        self._applied.clear()
        self._want = up
        if not self._applied.wait(5.0):
            raise SimError("TCP gate did not follow")
        if self._error:
            raise self._error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2.0)

    def _run(self) -> None:
        sock: socket.socket | None = None
        while not self._stop.is_set():
            if self._want and sock is None:
                try:
                    sock = socket.socket()
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.bind(("127.0.0.1", self.port))
                    sock.listen(16)
                    self._error = None
                except OSError as e:
                    sock, self._error = None, e
            elif not self._want and sock is not None:
                sock.close()
                sock = None
            self._applied.set()
            if sock is None:
                time.sleep(0.01)
            elif select.select([sock], [], [], 0.01)[0]:
                try:
                    conn, _ = sock.accept()
                    conn.close()
                except OSError:
                    pass
        if sock is not None:
            sock.close()


class LinkSim:
    def __init__(self, scenario: Scenario, workdir: Path, *, speed: float | None = None, modem: str = "at",
                 gpsd_port: int | None = None, on_datapath: Callable[[bool], None] | None = None,
                 tcp_gate: bool = False, at_noise_every: int = 0) -> None:
        if modem not in ("at", "mmcli"):
            raise ValueError("modem must be 'at' or 'mmcli'")
        self.sc = scenario
        self.workdir = workdir
        self.speed = speed or scenario.speed
        self.modem_kind = modem
        self.gpsd_port = gpsd_port or free_port()
        self.on_datapath = on_datapath
        self.gate = TcpGate() if tcp_gate else None
        self.at_noise_every = at_noise_every
        self.at: AtModemSim | None = None
        self.mmcli: MmcliStub | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.datapath_log: list[tuple[float, bool, float]] = []  # (scenario t, up, wall monotonic)
        self._anchor: tuple[float, float] | None = None  # (scenario t, wall monotonic)
        self.anchors: list[tuple[float, float]] = []
        self._now = 0.0
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._datapath = True

    # --------------------------------------------------------------------------------------- clock
    def now(self) -> float:
        """Scenario seconds: 0 until gpsd reports the first epoch, the end once gpsfake is done."""
        if self._done.is_set():
            return self.sc.duration_s
        with self._lock:
            if self._anchor is None:
                return 0.0
            t0, w0 = self._anchor
            # Extrapolate at most one epoch past the last report; never run backwards.
            self._now = max(self._now, min(t0 + (time.monotonic() - w0) * self.speed, t0 + 1.0))
            return min(self._now, self.sc.duration_s)

    def _anchor_at(self, t: float) -> None:
        with self._lock:
            if self._anchor is None or t > self._anchor[0]:
                self._anchor = (t, time.monotonic())
                self.anchors.append(self._anchor)

    def wall_between(self, a: float, b: float) -> float:
        """Wall seconds the replay really took from scenario time `a` to `b` (gpsfake runs a little slower
        than nominal, more so on a busy machine): what the agent's figures should show."""
        return self._wall_at(b) - self._wall_at(a)

    def _wall_at(self, t: float) -> float:
        pts = self.anchors
        if not pts:
            raise SimError("the route has not played yet")
        after = next((i for i, (st, _) in enumerate(pts) if st >= t), len(pts) - 1)
        (t0, w0), (t1, w1) = pts[max(0, after - 1)], pts[after]
        return w0 if t1 == t0 else w0 + (w1 - w0) * (t - t0) / (t1 - t0)

    # --------------------------------------------------------------------------------------- set-up
    def prepare(self) -> LinkSim:
        """Everything but the route: the modem answers (in its t=0 state) before the agent starts."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        find_gpsfake()
        if self.modem_kind == "at":
            self.at = AtModemSim(lambda: self.sc.modem(self.now()), noise_every=self.at_noise_every).start()
        else:
            self.mmcli = MmcliStub(self.workdir / "mmcli")
            self.mmcli.update(self.sc.modem(0.0))
        if self.gate:
            self.gate.start()
        return self

    def probe_config(self, **extra: Any) -> dict[str, Any]:
        """`[probes.link]` for an agent watching this simulation, thresholds scaled by `speed`."""
        epoch = 1.0 / self.speed
        modem = f"at:{self.at.path}" if self.at else "mmcli"
        cfg: dict[str, Any] = {
            "enabled": True, "interval_s": 0.05, "metrics_interval_s": 1.0, "iface": {"name": "lo"},
            "modem": {"source": modem, "mmcli": str(self.mmcli.path) if self.mmcli else "mmcli",
                      "interval_s": 0.05, "episode_interval_s": 0.05, "timeout_s": 1.0, "signal_refresh_s": 0},
            # gpsd reports once per epoch; a fix is stale after three missed epochs, and never sooner than 1 s
            # of wall time: gpsfake's pacing jitters by more than one compressed epoch on a busy machine.
            "gnss": {"url": f"gpsd://127.0.0.1:{self.gpsd_port}", "stale_s": max(1.0, round(3 * epoch, 3)),
                     "reconnect_s": 0.2, "connect_timeout_s": 1.0},
            "datapath": {"uplink": True, "tcp_interval_s": 0.1, "tcp_episode_interval_s": 0.05,
                         "tcp_timeout_s": 0.5},
            "rules": rules(self.speed),
        }
        if self.gate:
            cfg["datapath"]["tcp_target"] = f"127.0.0.1:{self.gate.port}"
        for k, v in extra.items():
            if isinstance(v, dict) and isinstance(cfg.get(k), dict):
                cfg[k] = {**cfg[k], **v}
            else:
                cfg[k] = v
        return cfg

    def start(self, delay_s: float = 0.0) -> LinkSim:
        """Write the route and start gpsfake (after `delay_s`, so an agent started meanwhile sees the lead-in)."""
        nmea = write_nmea(self.workdir / f"{self.sc.name}.nmea", sample_route(self.sc.gnss, self.sc.duration_s))
        cycle = 1.0 / (self.speed * SENTENCES_PER_EPOCH)

        def launch() -> None:
            if delay_s and self._stop.wait(delay_s):
                return
            self._launch(nmea, cycle)

        self._spawn(launch, "gpsfake-launch")
        self._spawn(self._tick, "link-sim-tick")
        return self

    def _launch(self, nmea: Path, cycle: float) -> None:
        err = (self.workdir / "gpsfake.log").open("ab")
        # -p: gpsfake watches as a client and pipes gpsd's JSON to us (the scenario clock) and starts feeding
        # only once that watch is in place, so no epoch is lost to gpsd's device probing; it also exits when
        # the log is done (-1). PYTHONUNBUFFERED: gpsfake writes that pipe unflushed otherwise.
        # Root works here: gpsd runs as a child with -N, the pty gpsfake makes is world-readable; the only
        # complaint is "unable to connect to the DBUS system bus", which is harmless.
        self.proc = subprocess.Popen(
            [find_gpsfake(), "-p", "-q", "-1", "-P", str(self.gpsd_port), "-c", f"{cycle:.5f}", "-r", WATCH,
             str(nmea)], stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        err.close()
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            try:
                rep = json.loads(raw)
            except ValueError:
                continue
            if isinstance(rep, dict) and rep.get("class") == "TPV" and isinstance(rep.get("time"), str):
                t = scenario_time(rep["time"])
                if t is not None:
                    self._anchor_at(t)
        self.proc.wait()
        self._done.set()

    def _tick(self) -> None:
        last: ModemPoint | None = None
        while not self._stop.is_set():
            t = self.now()
            if self.mmcli:
                p = self.sc.modem(t)
                if p != last:
                    self.mmcli.update(p)
                    last = p
            up = self.sc.datapath(t)
            if up != self._datapath:
                self._datapath = up
                self.datapath_log.append((t, up, time.monotonic()))
                log.info("scenario %s t=%.1f: data path %s", self.sc.name, t, "up" if up else "down")
                if self.gate:
                    self.gate.set(up)
                if self.on_datapath:
                    self.on_datapath(up)
            if self._done.is_set():
                return
            time.sleep(0.01)

    def _spawn(self, fn: Callable[[], None], name: str) -> None:
        th = threading.Thread(target=fn, name=name, daemon=True)
        th.start()
        self._threads.append(th)

    # --------------------------------------------------------------------------------------- end
    def wait(self, timeout_s: float) -> bool:
        return self._done.wait(timeout_s)

    def stop(self) -> None:
        self._stop.set()
        if self.proc and self.proc.poll() is None:
            # gpsfake takes its gpsd down with it on SIGTERM; the group id is the one we created.
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(5)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        for th in self._threads:
            th.join(3.0)
        if self.at:
            self.at.stop()
        if self.gate:
            self.gate.stop()

    def __enter__(self) -> LinkSim:
        return self.prepare()

    def __exit__(self, *exc: object) -> None:
        self.stop()
