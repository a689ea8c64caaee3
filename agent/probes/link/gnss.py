"""GNSS from gpsd's JSON protocol: `?WATCH={"enable":true,"json":true}`, then TPV and SKY reports, one per line.

A reader thread keeps the latest state; the detector reads a snapshot each tick. Malformed lines are counted.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

from ...counters import Counters
from ...dataclass_shared import dataclass
from ...errors import Malformed
from .sample import GnssReading

WATCH = b'?WATCH={"enable":true,"json":true}\n'
MAX_LINE = 64 * 1024  # a SKY with 100+ satellites is ~10 KiB


@dataclass(frozen=True)
class Tpv:
    mode: int
    lat: float | None = None
    lon: float | None = None
    alt: float | None = None
    speed_kmh: float | None = None


@dataclass(frozen=True)
class Sky:
    used: int | None
    seen: int | None


def _num(d: Mapping[str, Any], key: str, lo: float, hi: float) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise Malformed(f"{key}={v!r}")
    return float(v)


def parse_report(line: bytes | str) -> Tpv | Sky | None:
    """One gpsd report → Tpv / Sky; None for classes we do not use (VERSION, DEVICES, WATCH, ...)."""
    try:
        obj = json.loads(line)
    except ValueError:
        raise Malformed("not JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("class"), str):
        raise Malformed("no class")
    cls = obj["class"]
    if cls == "TPV":
        mode = obj.get("mode", 0)
        if isinstance(mode, bool) or mode not in (0, 1, 2, 3):
            raise Malformed(f"mode={mode!r}")
        speed = _num(obj, "speed", 0.0, 1000.0)  # m/s
        alt = _num(obj, "altMSL", -1000.0, 100_000.0)
        return Tpv(mode=mode, lat=_num(obj, "lat", -90.0, 90.0), lon=_num(obj, "lon", -180.0, 180.0),
                   alt=alt if alt is not None else _num(obj, "alt", -1000.0, 100_000.0),
                   speed_kmh=None if speed is None else speed * 3.6)
    if cls == "SKY":
        used = _num(obj, "uSat", 0, 1000)
        seen = _num(obj, "nSat", 0, 1000)
        sats = obj.get("satellites")
        if used is None and sats is not None:
            if not isinstance(sats, list) or not all(isinstance(s, dict) for s in sats):
                raise Malformed("satellites is not a list of objects")
            used, seen = float(sum(1 for s in sats if s.get("used") is True)), float(len(sats))
        if used is None and seen is None:
            return None  # gpsd sends partial SKYs (e.g. DOPs only) between full ones
        return Sky(used=None if used is None else int(used), seen=None if seen is None else int(seen))
    return None


class GpsdClient:
    """Connects, watches, reconnects every `reconnect_s` while gpsd is away; one log line per state change."""

    def __init__(self, host: str, port: int, mono: Callable[[], float], *, stale_s: float, reconnect_s: float,
                 connect_timeout_s: float, counters: Counters, log: logging.Logger | None = None) -> None:
        self.host, self.port = host, port
        self.mono = mono
        self.stale_s = stale_s
        self.reconnect_s = reconnect_s
        self.connect_timeout_s = connect_timeout_s
        self.counters = counters
        self.log = log or logging.getLogger("icvq.probe.link")
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._connected = False
        self._tpv: Tpv | None = None
        self._tpv_t: float | None = None
        self._sky: Sky | None = None
        self._was_up: bool | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="link-gnss", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread:
            self._thread.join(3.0)

    def snapshot(self) -> GnssReading:
        now = self.mono()
        with self._lock:
            if not self._connected:
                return GnssReading(connected=False)
            tpv, t, sky = self._tpv, self._tpv_t, self._sky
            fresh = tpv is not None and t is not None and now - t <= self.stale_s
            fix = bool(fresh and tpv is not None and tpv.mode >= 2)
            f = tpv if fix else None
            return GnssReading(connected=True, mode=tpv.mode if fresh and tpv else None, fix=fix,
                               lat=f.lat if f else None, lon=f.lon if f else None, alt=f.alt if f else None,
                               speed_kmh=f.speed_kmh if f else None,
                               sats_used=sky.used if sky else None, sats_seen=sky.seen if sky else None)

    # ----------------------------------------------------------------------------------------- thread
    def _state(self, up: bool, why: str = "") -> None:
        with self._lock:
            self._connected = up
            if not up:
                self._tpv = self._tpv_t = self._sky = None
        if up != self._was_up:
            if up:
                self.log.info("gpsd %s:%d connected", self.host, self.port)
            elif self._was_up is not None or why:
                self.log.warning("gpsd %s:%d unavailable: %s", self.host, self.port, why or "closed")
            self._was_up = up

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._session()
                self._state(False, "closed by gpsd")
            except OSError as e:
                self.counters.inc("gnss_connect_errors")
                self._state(False, str(e) or type(e).__name__)
            self._stop.wait(self.reconnect_s)

    def _session(self) -> None:
        with socket.create_connection((self.host, self.port), timeout=self.connect_timeout_s) as sock:
            self._sock = sock
            try:
                sock.sendall(WATCH)
                sock.settimeout(0.5)  # wake up now and then to notice stop
                self._state(True)
                buf = b""
                while not self._stop.is_set():
                    try:
                        chunk = sock.recv(65536)
                    except TimeoutError:
                        continue
                    if not chunk:
                        return
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    if len(buf) > MAX_LINE:
                        self.counters.inc("malformed_gnss")
                        buf = b""
                    for line in lines:
                        if line.strip():
                            self.feed(line)
            finally:
                self._sock = None

    def feed(self, line: bytes) -> None:
        try:
            rep = parse_report(line)
        except Malformed:
            self.counters.inc("malformed_gnss")
            return
        with self._lock:
            if isinstance(rep, Tpv):
                self._tpv, self._tpv_t = rep, self.mono()
            elif isinstance(rep, Sky):
                self._sky = rep
