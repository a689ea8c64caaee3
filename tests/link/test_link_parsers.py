"""Parsers for AT answers, mmcli JSON and gpsd reports: tables of good lines and of garbage. Garbage raises
the one shared `agent.errors.Malformed` (which callers count per source), never anything else."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.errors import Malformed
from agent.probes.link import gnss, mmcli, modem_at
from agent.probes.link.modem_at import Cesq
from tools.sim.modem import ModemPoint, at_answer, mmcli_modem, mmcli_signal


@pytest.mark.parametrize(("line", "want"), [
    ("+CESQ: 99,99,255,255,20,45", Cesq(rsrq=-10.0, rsrp=-96.0)),
    ("+CESQ: 99,99,255,255,255,255", Cesq(rsrq=None, rsrp=None)),          # no LTE cell
    ("+CESQ: 99,99,255,255,0,0", Cesq(rsrq=-20.0, rsrp=-141.0)),
    ("+CESQ:99,99,255,255,34,97", Cesq(rsrq=-3.0, rsrp=-44.0)),
    ("+CESQ: 99,99,255,255,255,255,40,56,60", Cesq(None, None, nr_rsrq=-23.0, nr_rsrp=-100.0, nr_snr=7.0)),
])
def test_cesq(line: str, want: Cesq) -> None:
    assert modem_at.parse_cesq(line) == want


@pytest.mark.parametrize(("line", "dbm"), [("+CSQ: 20,99", -73.0), ("+CSQ: 0,0", -113.0), ("+CSQ: 31,99", -51.0),
                                           ("+CSQ: 99,99", None)])
def test_csq(line: str, dbm: float | None) -> None:
    assert modem_at.parse_csq(line) == dbm


@pytest.mark.parametrize(("line", "prefix", "stat"), [
    ('+CEREG: 2,1,"1A2B","01A2B3C4",7', "+CEREG", 1),
    ("+CEREG: 0,5", "+CEREG", 5),
    ("+CREG: 0,2", "+CREG", 2),
])
def test_registration(line: str, prefix: str, stat: int) -> None:
    assert modem_at.parse_reg(line, prefix) == stat


@pytest.mark.parametrize(("line", "stat"), [("+CEREG: 3", 3), ('+CEREG: 1,"1A2B","01A2B3C4",7', 1)])
def test_unsolicited_registration_is_told_apart_from_the_answer(line: str, stat: int) -> None:
    with pytest.raises(modem_at.Unsolicited):
        modem_at.parse_reg(line, "+CEREG")
    assert modem_at.parse_reg(line, "+CEREG", solicited=False) == stat


@pytest.mark.parametrize(("line", "want"), [
    ('+COPS: 0,0,"Sim Telecom",7', ("Sim Telecom", "lte")),
    ('+COPS: 0,0,"A, B & Co",13', ("A, B & Co", "lte+5gnr")),
    ('+COPS: 1,2,"26201",12', ("26201", "5gnr")),
    ("+COPS: 0", (None, None)),
])
def test_cops(line: str, want: tuple[str | None, str | None]) -> None:
    assert modem_at.parse_cops(line) == want


@pytest.mark.parametrize(("fn", "line"), [
    (modem_at.parse_cesq, "+CESQ: x,y"),
    (modem_at.parse_cesq, "+CESQ: 99,99,255,255,20"),
    (modem_at.parse_cesq, "+CESQ: 99,99,255,255,20,120"),       # RSRP index out of range
    (modem_at.parse_cesq, "+CSQ: 20,99"),                       # wrong prefix
    (modem_at.parse_csq, "+CSQ: 77,99"),
    (modem_at.parse_csq, "+CSQ: "),
    (lambda line: modem_at.parse_reg(line, "+CEREG"), "+CEREG: 0,12"),
    (lambda line: modem_at.parse_reg(line, "+CEREG"), "+CEREG: 0,abc"),
    (modem_at.parse_cops, "+COPS: x"),
    (modem_at.parse_cops, '+COPS: 0,0,"Op",LTE'),
    (modem_at.parse_cgatt, "+CGATT: 2"),
    (modem_at.parse_cgatt, "+CGATT:"),
])
def test_at_garbage_is_malformed(fn: Any, line: str) -> None:
    with pytest.raises(Malformed):
        fn(line)


def _ans(cmd: str, p: ModemPoint) -> str:
    lines = at_answer(cmd, p)
    assert lines, cmd
    return lines[0]


def test_simulated_modem_answers_parse_back() -> None:
    p = ModemPoint(rsrp=-101.0, rsrq=-13.5, rssi=-71.0, reg=5, attached=False, act=7, operator="Roam")
    assert modem_at.parse_cesq(_ans("AT+CESQ", p)) == Cesq(rsrq=-13.5, rsrp=-101.0)
    assert modem_at.parse_csq(_ans("AT+CSQ", p)) == -71.0
    assert modem_at.parse_reg(_ans("AT+CEREG?", p), "+CEREG") == 5
    assert modem_at.parse_cops(_ans("AT+COPS?", p)) == ("Roam", "lte")
    assert modem_at.parse_cgatt(_ans("AT+CGATT?", p)) is False
    assert at_answer("AT+C5GREG?", p) is None


# ------------------------------------------------------------------------------------------------- mmcli
def test_mmcli_modem_and_signal() -> None:
    p = ModemPoint(rsrp=-104.0, rsrq=-11.0, rssi=-75.0, snr=6.5, reg=1, attached=True)
    m = mmcli.parse_modem(json.dumps(mmcli_modem(p)))
    assert (m.reg, m.registered, m.attached, m.tech, m.operator) == ("home", True, True, "lte", "Sim Telecom")
    s = mmcli.parse_signal(json.dumps(mmcli_signal(p)))
    assert (s.known, s.rsrp, s.rsrq, s.rssi, s.snr, s.nr_rsrp) == (True, -104.0, -11.0, -75.0, 6.5, None)


@pytest.mark.parametrize(("doc", "reg", "registered", "attached"), [
    ({"modem": {"generic": {"state": "connected"}, "3gpp": {"registration-state": "roaming"}}},
     "roaming", True, True),                                        # MM < 1.20: no packet-service-state
    ({"modem": {"generic": {"state": "registered"}, "3gpp": {"registration-state": "home"}}}, "home", True, False),
    ({"modem": {"generic": {"state": "searching"}, "3gpp": {"registration-state": "searching",
                                                            "packet-service-state": "detached"}}},
     "searching", False, False),
    ({"modem": {"generic": {"state": "enabled"}, "3gpp": {"registration-state": "--"}}}, "enabled", False, False),
    ({"modem": {"generic": {"state": "failed"}}}, "failed", False, False),
    ({"modem": {"3gpp": {"registration-state": "home-sms-only"}}}, "home-sms-only", False, None),
    ({"modem": {}}, None, None, None),
])
def test_mmcli_registration_table(doc: dict[str, Any], reg: str | None, registered: bool | None,
                                  attached: bool | None) -> None:
    m = mmcli.parse_modem(json.dumps(doc))
    assert (m.reg, m.registered, m.attached) == (reg, registered, attached)


def test_mmcli_signal_without_lte_or_5g_is_not_known() -> None:
    assert not mmcli.parse_signal('{"modem": {"signal": {"refresh": {"rate": "0"}}}}').known
    s = mmcli.parse_signal('{"modem": {"signal": {"lte": {"rsrp": "--", "rsrq": "--"}, '
                           '"5g": {"rsrp": "-99.00", "snr": "12.00"}}}}')
    assert s.known and s.rsrp is None and s.nr_rsrp == -99.0 and s.nr_snr == 12.0


@pytest.mark.parametrize("text", [
    "", "not json", "[]", '{"modem": []}', '{"modem": {"generic": {"access-technologies": "lte"}}}',
    '{"modem": {"3gpp": {"registration-state": 5}}}',
])
def test_mmcli_modem_garbage(text: str) -> None:
    with pytest.raises(Malformed):
        mmcli.parse_modem(text)


@pytest.mark.parametrize("text", ['{"modem": {}}', '{"modem": {"signal": {"lte": {"rsrp": "strong"}}}}', "{"])
def test_mmcli_signal_garbage(text: str) -> None:
    with pytest.raises(Malformed):
        mmcli.parse_signal(text)


# ------------------------------------------------------------------------------------------------- gpsd
def test_gpsd_tpv_and_sky() -> None:
    tpv = gnss.parse_report('{"class":"TPV","mode":3,"lat":47.1,"lon":11.2,"altMSL":574.0,"alt":574.0,'
                            '"speed":22.222,"time":"2026-01-01T12:00:00.000Z"}')
    assert isinstance(tpv, gnss.Tpv) and tpv.mode == 3 and tpv.speed_kmh == pytest.approx(80.0, abs=0.01)
    assert tpv.alt == 574.0 and (tpv.lat, tpv.lon) == (47.1, 11.2)
    assert gnss.parse_report('{"class":"TPV","mode":1,"time":"2026-01-01T12:00:20.000Z"}') == gnss.Tpv(mode=1)
    assert gnss.parse_report('{"class":"SKY","nSat":8,"uSat":6,"satellites":[]}') == gnss.Sky(used=6, seen=8)
    sky = gnss.parse_report('{"class":"SKY","satellites":[{"PRN":1,"used":true},{"PRN":2,"used":false}]}')
    assert sky == gnss.Sky(used=1, seen=2)
    assert gnss.parse_report('{"class":"SKY","hdop":0.9}') is None
    assert gnss.parse_report('{"class":"VERSION","release":"3.22"}') is None


@pytest.mark.parametrize("line", [
    "", "{", "[1,2]", '"TPV"', '{"mode":3}', '{"class":"TPV","mode":7}', '{"class":"TPV","mode":"3"}',
    '{"class":"TPV","mode":true}', '{"class":"TPV","mode":3,"lat":123.0}', '{"class":"TPV","mode":3,"speed":"fast"}',
    '{"class":"SKY","satellites":"many"}', '{"class":"SKY","satellites":[1,2]}', b"\xff\xfe{}",
])
def test_gpsd_garbage(line: str | bytes) -> None:
    with pytest.raises(Malformed):
        gnss.parse_report(line)


def test_one_malformed_type_for_every_link_parser() -> None:
    # One type to catch and count: a parser module must not grow its own again.
    assert modem_at.Malformed is mmcli.Malformed is gnss.Malformed is Malformed
    assert issubclass(modem_at.Unsolicited, Malformed) and issubclass(Malformed, ValueError)
