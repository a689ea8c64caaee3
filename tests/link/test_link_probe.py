"""The probe and its sources with real stand-ins: an AT modem on a pty, canned mmcli, a gpsd that talks
garbage over TCP, a TCP gate. Bad input is counted, never fatal."""

from __future__ import annotations

import dataclasses
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.config import from_mapping
from agent.counters import Counters
from agent.errors import ConfigError, ProbeError
from agent.probe import ProbeContext, UplinkView
from agent.probes.link import Config, build
from agent.probes.link.gnss import GpsdClient
from agent.probes.link.mmcli import Mmcli
from agent.probes.link.modem_at import AtModem
from agent.probes.link.monitor import LinkProbe
from agent.records import Kind, Record
from agent.schema import build as build_config
from tools.sim.link_runner import TcpGate
from tools.sim.modem import AtModemSim, MmcliStub, ModemPoint

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]


def wait_until(pred: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise TimeoutError("condition not met")


# ------------------------------------------------------------------------------------------------ config
def _keys(cls: Any, prefix: str = "") -> set[str]:
    out = set()
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.type) or (isinstance(f.type, str) and f.type.endswith("Config")):
            sub = type(getattr(cls(), f.name))
            out |= _keys(sub, f"{prefix}{f.name}.")
        else:
            out.add(prefix + f.name)
    return out


def _toml_keys(table: dict[str, Any], prefix: str = "") -> set[str]:
    out = set()
    for k, v in table.items():
        out |= _toml_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
    return out


def test_sample_config_lists_every_key_with_its_default() -> None:
    table = tomllib.loads((REPO / "config/probes/link.toml").read_text())["probes"]["link"]
    assert _toml_keys(table) == _keys(Config)
    assert build_config(Config, table) == Config()
    text = (REPO / "config/probes/link.toml").read_text()
    for line in text.splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            assert "#" in line, f"undocumented key: {line}"
    assert text.count("Default ") >= len(_keys(Config))


@pytest.mark.parametrize(("table", "key"), [
    ({"modem": {"source": "serial"}}, "probes.link.modem.source"),
    ({"modem": {"source": "at:ttyUSB2"}}, "probes.link.modem.source"),
    ({"gnss": {"url": "tcp://localhost:2947"}}, "probes.link.gnss.url"),
    ({"gnss": {"url": "gpsd://host:notaport"}}, "probes.link.gnss.url"),
    ({"datapath": {"tcp_target": "host"}}, "probes.link.datapath.tcp_target"),
    ({"rules": {"gnss_keep_ratio": 1.5}}, "probes.link.rules.gnss_keep_ratio"),
    ({"rules": {"tunnel_s": 3}}, "probes.link.rules.tunnel_s"),
])
def test_config_errors_name_the_key(table: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as e:
        from_mapping({"vehicle": {"id": "V", "device": "hu", "fleet": "f"}, "probes": {"link": table}})
    assert e.value.key == key


def test_disabled_builds_nothing_and_enabled_builds_one_probe() -> None:
    ctx = ProbeContext(clock=FakeClock(), emit=lambda r: None)
    assert build(Config(), ctx) == []
    cfg = build_config(Config, {"enabled": True, "modem": {"source": "none"}, "gnss": {"url": ""}})
    [p] = build(cfg, ctx)
    assert isinstance(p, LinkProbe) and p.modem is None and p.gnss is None


# ------------------------------------------------------------------------------------------------ modem
@pytest.fixture
def at_sim() -> Iterator[AtModemSim]:
    point = {"p": ModemPoint(rsrp=-98.0, rsrq=-12.0, rssi=-69.0, reg=5, operator="Roam, Ltd")}
    sim = AtModemSim(lambda: point["p"], noise_every=2).start()
    sim.point = point  # type: ignore[attr-defined]
    try:
        yield sim
    finally:
        sim.stop()


def test_at_modem_over_a_pty_with_noise_and_urcs(at_sim: AtModemSim) -> None:
    counters = Counters()
    m = AtModem(at_sim.path, 115200, 1.0, counters)
    try:
        for _ in range(3):
            r = m.read()
            assert (r.rsrp, r.rsrq, r.rssi, r.registered, r.reg, r.attached, r.tech, r.operator) == \
                (-98.0, -12.0, -69.0, True, "roaming", True, "lte", "Roam, Ltd")
            assert r.signal_known
        # The garbage lines were seen, counted and skipped; the URC was not taken for the answer.
        assert counters.get("malformed_at") > 0 and counters.get("at_unsolicited") > 0
        at_sim.point["p"] = ModemPoint(rsrp=None, rsrq=None, rssi=None, reg=2, attached=False)  # type: ignore[attr-defined]
        r = m.read()
        assert r.signal_known and r.rsrp is None and r.registered is False and r.attached is False
        assert r.operator is None and r.reg == "searching"
    finally:
        m.close()


def test_at_modem_that_stops_answering_is_unreadable_then_recovers(at_sim: AtModemSim) -> None:
    counters = Counters()
    m = AtModem(at_sim.path, 115200, 0.2, counters)
    probe = LinkProbe(build_config(Config, {"enabled": True, "gnss": {"url": ""},
                                            "modem": {"source": f"at:{at_sim.path}"}}),
                      ProbeContext(clock=FakeClock(), emit=lambda r: None))
    assert probe.modem is not None
    probe.modem.read = m.read  # the same sim, a short timeout
    probe.modem.poll_once()
    assert probe.modem.latest is not None
    at_sim.mute = True
    probe.modem.poll_once()
    assert probe.modem.latest is None and probe.counters.get("modem_errors") == 1
    at_sim.mute = False
    probe.modem.poll_once()
    assert probe.modem.latest is not None and probe.modem.latest.registered is True
    m.close()


def test_missing_at_port_is_counted_not_fatal(tmp_path: Path) -> None:
    cfg = build_config(Config, {"enabled": True, "interval_s": 0.05, "gnss": {"url": ""},
                                "modem": {"source": f"at:{tmp_path}/ttyUSB9", "interval_s": 0.05}})
    out: list[Record] = []
    p = LinkProbe(cfg, ProbeContext(clock=FakeClock(), emit=out.append))
    p.start()
    try:
        wait_until(lambda: p.counters.get("modem_errors") >= 2)
        assert p.status()["state"] == "ok"  # the probe itself keeps running
    finally:
        p.stop()


def test_mmcli_garbage_is_counted(tmp_path: Path) -> None:
    stub = MmcliStub(tmp_path / "mm")
    counters = Counters()
    m = Mmcli(str(stub.path), "any", 2.0, 5, counters)
    stub.update(ModemPoint(rsrp=-107.0))
    r = m.read()
    assert r.registered and r.attached and r.rsrp == -107.0 and r.tech == "lte"
    stub.write_raw('{"modem": {"generic": {"state": "connected"}}}', "garbage")
    r = m.read()
    assert r.attached is True and not r.signal_known and counters.get("malformed_mmcli") == 1
    stub.write_raw("<html>", "{}")
    with pytest.raises(ProbeError):
        m.read()
    assert counters.get("malformed_mmcli") == 2
    with pytest.raises(ProbeError):
        Mmcli(str(tmp_path / "no-such-mmcli"), "any", 1.0, 0, counters).read()


# ------------------------------------------------------------------------------------------------- gpsd
class FakeGpsd:
    """A TCP server speaking gpsd's protocol badly on purpose."""

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.watch = b""
        self.release = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            self.watch = conn.recv(1024)
            for chunk in self.lines:
                conn.sendall(chunk)
                time.sleep(0.01)
            self.release.wait(5)
        self.sock.close()


def test_gpsd_stream_with_garbage_is_counted_and_the_fix_still_read() -> None:
    tpv = b'{"class":"TPV","mode":3,"lat":47.5,"lon":11.5,"speed":10.0,"altMSL":600.0}'
    srv = FakeGpsd([b'{"class":"VERSION","release":"3.22"}\n', b"garbage\n", b'{"class":"TPV","mode":9}\n',
                    tpv[:30], tpv[30:] + b"\n",  # one report split over two reads
                    b"x" * 70_000 + b"\n",     # an endless line
                    b'{"class":"SKY","nSat":11,"uSat":7}\n', b"\xff\xfe\n"])
    counters = Counters()
    g = GpsdClient("127.0.0.1", srv.port, time.monotonic, stale_s=5.0, reconnect_s=0.1, connect_timeout_s=1.0,
                   counters=counters)
    g.start()
    try:
        wait_until(lambda: g.snapshot().sats_used == 7 and counters.get("malformed_gnss") >= 4)
        s = g.snapshot()
        assert srv.watch.startswith(b'?WATCH={"enable":true,"json":true}')
        assert (s.connected, s.fix, s.mode, s.lat, s.lon, s.alt, s.sats_seen) == (True, True, 3, 47.5, 11.5, 600.0, 11)
        assert s.speed_kmh == pytest.approx(36.0)
        srv.release.set()  # gpsd goes away: no information, not "no fix"
        wait_until(lambda: not g.snapshot().connected)
        assert g.snapshot().fix is None
    finally:
        g.stop()


def test_gpsd_silence_means_no_fix() -> None:
    srv = FakeGpsd([b'{"class":"TPV","mode":3,"lat":47.5,"lon":11.5}\n'])
    g = GpsdClient("127.0.0.1", srv.port, time.monotonic, stale_s=0.2, reconnect_s=0.1, connect_timeout_s=1.0,
                   counters=Counters())
    g.start()
    try:
        wait_until(lambda: g.snapshot().fix is True)
        wait_until(lambda: g.snapshot().fix is False)
        assert g.snapshot().connected
    finally:
        srv.release.set()
        g.stop()


# ----------------------------------------------------------------------------------------- whole probe
class Harness:
    """The probe on a fake clock, ticked by hand; the uplink view and the TCP gate are ours to flip."""

    def __init__(self, **cfg: Any) -> None:
        self.gate = TcpGate().start()
        self.clock = FakeClock()
        self.up = True
        self.ack = time.monotonic()
        self.out: list[Record] = []
        table = {"enabled": True, "modem": {"source": "none"}, "gnss": {"url": ""}, "iface": {"name": "lo"},
                 "metrics_interval_s": 10.0, "datapath": {"tcp_target": f"127.0.0.1:{self.gate.port}"}, **cfg}
        ids = iter(range(1, 100))
        self.probe = LinkProbe(build_config(Config, table),
                               ProbeContext(clock=self.clock, emit=self.out.append, uplink=self.view),
                               new_id=lambda: next(ids))

    def view(self) -> UplinkView:
        if self.up:
            self.ack = time.monotonic()
        return UplinkView(connected=self.up, last_ack_mono=self.ack, broker="127.0.0.1:1883")

    def tick(self, n: int = 1, dt: float = 1.0) -> list[Record]:
        got = []
        for _ in range(n):
            self.clock.advance(dt)
            assert self.probe.tcp is not None
            self.probe.tcp.poll_once()
            got += list(self.probe.sample())
        self.out += got
        return got

    def named(self, name: str) -> list[Record]:
        return [r for r in self.out if r.name == name]


def test_data_path_loss_without_modem_or_gnss_is_an_unknown_episode() -> None:
    h = Harness()
    try:
        first = h.tick()
        assert {r.name for r in first} >= {"link.rtt_ms", "link.connected", "link.datapath", "link.iface"}
        h.tick(5)
        h.gate.set(False)  # the TCP path fails, the MQTT session is still up
        h.tick(10)
        h.gate.set(True)
        h.tick(3)
        loss = h.named("link.loss")
        assert [r.kind for r in loss] == [Kind.BEGIN, Kind.END] and loss[0].episode == loss[1].episode == 1
        end = loss[1].data
        assert isinstance(end, dict) and end["cause"] == "unknown" and end["duration_s"] == 10
        assert end["lost"] == ["datapath"] and end["recovery"]["to_datapath_s"] == 10
        assert h.probe.status()["link"] == "up" and end["ended_by"] == "recovered"
        # Both records are back-dated to the first bad tick (ticks are 1 s on the fake clock).
        begin = loss[0].data
        assert isinstance(begin, dict) and begin["start"] == end["start"] == h.clock.wall() - 12
    finally:
        h.gate.stop()


def test_stop_ends_an_open_episode() -> None:
    h = Harness(modem={"source": "none"})
    try:
        h.tick(3)
        h.up = False
        h.tick(5)
        assert [r.kind for r in h.named("link.loss")] == [Kind.BEGIN]
        assert h.probe.status()["link"] == "open" and h.probe.status()["loss_for_s"] == 4
        h.probe.stop()
        end = h.named("link.loss")[-1]
        assert end.kind is Kind.END and isinstance(end.data, dict) and end.data["ended_by"] == "agent_stop"
    finally:
        h.gate.stop()
