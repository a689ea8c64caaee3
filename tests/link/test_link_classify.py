"""Classification is a pure function over the episode's timeline: tables of timelines in, causes out."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from link_timelines import CELL_BACK, CELL_GONE, GNSS_BACK, GNSS_GONE, GOOD, polled, run, timeline

from agent.probes.link import classify as c
from agent.probes.link.privacy import DEFAULT_GRID_M, snap
from agent.probes.link.sample import Sample
from agent.probes.link.settings import RulesConfig

R = RulesConfig()
BACK = dict(registered=True, attached=True, datapath=True)
NO_GNSS = dict(fix=None, lat=None, lon=None, speed_kmh=None)


def tunnel(back_reg: float = 2, back_att: float = 3, back_dp: float = 4, gnss_back: float = 0,
           speed: float = 80.0) -> list[Sample]:
    return timeline((0, {"speed_kmh": speed}), (100, CELL_GONE | GNSS_GONE), (160, CELL_BACK),
                    (160 + gnss_back, GNSS_BACK), (160 + back_reg, {"registered": True}),
                    (160 + back_att, {"attached": True}), (160 + back_dp, {"datapath": True}),
                    until=160 + max(back_dp, gnss_back) + 20)


CASES: list[tuple[str, list[Sample], str, str | None, dict[str, Any]]] = [
    ("tunnel", tunnel(), "tunnel", "tunnel",
     {"duration_s": 64, "signal_back_s": 60, "to_registered_s": 2, "to_attached_s": 3, "to_datapath_s": 4,
      "to_ack_s": 3.9}),
    ("coverage hole: decay with a fix", timeline(
        (95, CELL_GONE), (150, CELL_BACK | {"registered": True}), (151, {"attached": True}),
        (152, {"datapath": True}), until=180, ramp=(40, 100, -90, -126)),
     # The signal went unusable (< -120 dBm) at 91 s, registration at 95 s: the loss starts at 91 s.
     "coverage", "coverage", {"duration_s": 61, "start_evidence": "signal_lost", "to_registered_s": 0,
                              "to_attached_s": 1, "to_datapath_s": 2}),
    ("terminal: attach stays away after a tunnel", tunnel(back_att=200, back_dp=201), "terminal", "tunnel",
     {"to_registered_s": 2, "to_attached_s": 200, "evidence": ["attach"]}),
    ("terminal: registration stays away, GNSS fine", timeline(
        (100, CELL_GONE), (130, CELL_BACK), (230, BACK), until=260),
     "terminal", None, {"to_registered_s": 100, "evidence": ["registration", "attach"]}),
    ("terminal: data path stays away after attach", tunnel(back_dp=3 + 200), "terminal", "tunnel",
     {"to_attached_s": 3, "to_datapath_s": 203, "evidence": ["datapath"]}),
    ("terminal: the modem stops answering", timeline(
        (100, dict(modem=False, signal_known=False, rsrp=None, registered=None, attached=None, datapath=False)),
        (200, GOOD), until=230), "terminal", None, {"evidence": ["modem_silent"]}),
    ("network: radio fine, backend away", timeline((100, {"datapath": False}), (140, {"datapath": True}), until=170),
     "network", None, {"duration_s": 40, "to_registered_s": 0, "to_datapath_s": 40, "to_ack_s": 39.9}),
    ("network: a missed modem poll does not spoil it", timeline(
        (100, {"datapath": False}), (110, {"modem": False, "registered": None, "attached": None}),
        (112, {"modem": True, "registered": True, "attached": True}), (140, {"datapath": True}), until=170),
     "network", None, {"duration_s": 40}),
    ("unknown: no GNSS to tell tunnel from hole", timeline(
        (0, NO_GNSS), (100, CELL_GONE), (160, CELL_BACK | BACK), until=190), "unknown", None, {"duration_s": 60}),
    ("unknown: standing still in the dark", tunnel(speed=0.0), "unknown", None, {}),
    ("unknown: GNSS back long after the cell", tunnel(gnss_back=30), "unknown", None, {}),
    ("unknown: abrupt loss with a fix, no decay", timeline(
        (100, CELL_GONE), (160, CELL_BACK | BACK), until=190), "unknown", None, {}),
    ("not a tunnel when T3402 follows: terminal wins", tunnel(back_reg=720, back_att=720, back_dp=721),
     "terminal", "tunnel", {"to_registered_s": 720}),
    # The defaults (docs/link.md): one failed attempt (T3410 15 s) and one retry (T3411 10 s) is a healthy
    # terminal; the field case, registered 54 s after the signal came back, is not.
    ("tunnel: registered 27 s after the signal (one failed attempt + T3411)",
     tunnel(back_reg=27, back_att=28, back_dp=29), "tunnel", "tunnel", {"to_registered_s": 27}),
    ("terminal: registered 54 s after the signal (slow re-attach after a tunnel)",
     tunnel(back_reg=54, back_att=55, back_dp=56), "terminal", "tunnel",
     {"to_registered_s": 54, "evidence": ["registration", "attach"]}),
]


@pytest.mark.parametrize(("name", "samples", "cause", "setting", "figures"), CASES, ids=[x[0] for x in CASES])
def test_cause_and_figures(name: str, samples: list[Sample], cause: str, setting: str | None,
                           figures: dict[str, Any]) -> None:
    actions, _ = run(samples)
    kinds = [a.kind for a in actions if a.kind != "overdue"]
    assert kinds == ["begin", "end"], f"{name}: exactly one episode"
    end = actions[-1].fields
    assert (end["cause"], end["setting"]) == (cause, setting)
    flat = {**end, **end["recovery"]}
    for k, v in figures.items():
        assert flat[k] == (pytest.approx(v, abs=0.01) if isinstance(v, float | int) else v), k


def test_begin_carries_entry_position_speed_and_trend() -> None:
    actions, _ = run(timeline((95, CELL_GONE), (150, CELL_BACK | BACK), until=170, ramp=(40, 100, -90, -126)))
    begin = actions[0]
    assert begin.kind == "begin" and begin.episode == 1
    lat, lon = snap(47.0, 11.0, DEFAULT_GRID_M)  # the default grid, never the fix itself
    assert begin.fields["entry"] == {"age_s": 0.0, "lat": lat, "lon": lon, "speed_kmh": 80.0}
    tr = begin.fields["trend"]
    assert tr["metric"] == "rsrp" and tr["first"] == -85.0 and tr["slope_db_per_min"] < -30
    assert set(begin.fields["lost"]) == {"registered", "attached", "datapath"}
    end = actions[-1].fields
    assert end["exit"]["lat"] == lat and end["gnss"] == {"fix_ratio": 1.0, "lost": False, "lost_at_s": None,
                                                         "back_at_s": None}


def test_tunnel_records_gnss_during_the_episode_and_exit_position() -> None:
    end = run(tunnel())[0][-1].fields
    assert end["gnss"]["lost"] and end["gnss"]["lost_at_s"] == 0 and end["gnss"]["back_at_s"] == 60
    assert end["entry"]["speed_kmh"] == 80.0 and end["exit"]["lat"] == snap(47.01, 11.02, DEFAULT_GRID_M)[0] \
        and end["exit"]["speed_kmh"] == 70.0


def test_overdue_is_announced_once_while_the_episode_is_still_open() -> None:
    actions, _ = run(tunnel(back_att=200, back_dp=201))
    assert [a.kind for a in actions] == ["begin", "overdue", "end"]
    over = actions[1].fields
    # Signal back 60 s after the start; attach overdue defect_after_s later.
    assert over["evidence"] == ["attach"] and over["since_s"] == pytest.approx(60 + R.defect_after_s, abs=1.01)


def test_short_outage_is_a_blip_not_an_episode() -> None:
    actions, tr = run(timeline((100, {"datapath": False}), (102, {"datapath": True}), until=120))
    assert actions == [] and tr.counters.get("blips") == 1


def test_no_episode_before_the_link_was_up_once() -> None:
    boot = timeline((0, CELL_GONE), (30, CELL_BACK | BACK), until=60)
    actions, tr = run(boot)
    assert actions == [] and tr.state == "up"


def test_episode_waits_for_the_first_ack_or_gives_up_after_ack_wait() -> None:
    # Connected again at 140, but no PUBACK after 99.9: the episode closes ack_wait_s later without to_ack.
    s = [replace(x, last_ack_t=99.9) if x.t >= 100 else x
         for x in timeline((100, {"datapath": False}), (140, {"datapath": True}), until=200)]
    actions, _ = run(s)
    end = actions[-1]
    assert end.kind == "end" and end.fields["recovery"]["to_ack_s"] is None
    assert end.fields["duration_s"] == 40 and end.fields["cause"] == "network"


def test_without_an_uplink_the_episode_ends_when_radio_is_back() -> None:
    s = [replace(x, datapath=None, last_ack_t=None) for x in tunnel()]
    actions, _ = run(s, wait_ack=False)
    assert [a.kind for a in actions] == ["begin", "end"]
    end = actions[-1].fields
    assert end["recovery"]["to_attached_s"] == 3 and end["duration_s"] == 63 and end["cause"] == "tunnel"


def test_close_ends_an_open_episode_marked_as_cut_short() -> None:
    _, tr = run(timeline((100, CELL_GONE), until=130))
    [a] = tr.close(131.0)
    assert a.kind == "end" and a.fields["ended_by"] == "agent_stop" and a.fields["duration_s"] == 31
    assert tr.close(132.0) == []


def test_long_episodes_are_compressed_and_bounded() -> None:
    actions, tr = run(timeline((100, {"datapath": False}), until=5000), max_timeline=100)
    assert len(tr.ep) <= 4  # one state run: first and last sample only
    assert [a.kind for a in actions] == ["begin"]


@pytest.mark.parametrize(("sample", "usable"), [
    (Sample(t=0), None),                                                # no modem
    (Sample(t=0, modem=True), None),                                    # modem, signal not asked/answered
    (Sample(t=0, modem=True, signal_known=True), False),                # answered: nothing heard
    (Sample(t=0, modem=True, signal_known=True, rsrp=-119.0), True),
    (Sample(t=0, modem=True, signal_known=True, rsrp=-121.0), False),
    (Sample(t=0, modem=True, signal_known=True, rsrp=-125.0, nr_rsrp=-100.0), True),  # NR carries it
    (Sample(t=0, modem=True, signal_known=True, rssi=-100.0), True),    # 2G/3G: RSSI only
    (Sample(t=0, modem=True, signal_known=True, rssi=-109.0), False),
])
def test_signal_usable(sample: Sample, usable: bool | None) -> None:
    assert c.usable(sample, R) is usable


@pytest.mark.parametrize(("values", "metric", "decayed"), [
    ([-90, -95, -100, -105, -112], "rsrp", True),
    ([-112, -112, -113, -112, -112], "rsrp", False),   # weak all along: no decay
    ([-90, -92, -91, -93, -95], "rsrp", False),        # no weak end
])
def test_decay(values: list[float], metric: str, decayed: bool) -> None:
    pre = [Sample(t=float(i * 10), modem=True, signal_known=True, rsrp=v) for i, v in enumerate(values)]
    tr = c.trend(pre, 50.0, R)
    assert tr["metric"] == metric and c.decayed(tr, R) is decayed


# ---------------------------------------------------------------------------------------- back-dating
# The radio goes but the MQTT session has not noticed yet (keep-alive): only the modem poll can see it.
RADIO_GONE: dict[str, Any] = dict(rsrp=None, rsrq=None, registered=False, attached=False)
HEALTHY_POLL_S = 5.0  # modem.interval_s while the link is fine


@pytest.mark.parametrize(("name", "phases", "start", "evidence", "lost_at_s"), [
    ("GNSS went 4 s before the modem poll saw the cell go", [(97, GNSS_GONE), (98, RADIO_GONE)],
     97.0, "gnss_lost", 0.0),
    ("the signal dropped before registration went", [(95, {"rsrp": -125.0}), (98, RADIO_GONE)],
     95.5, "signal_lost", None),
    ("no earlier evidence: the reading, taken before the tick that used it", [(98, RADIO_GONE)],
     100.5, "modem_down", None),
    ("fix lost in a car park 40 s before: not this loss, and lost_at_s says so", [(60, GNSS_GONE), (98, RADIO_GONE)],
     100.5, "modem_down", -40.5),
    ("a fine modem reading after the fix went: the fix is not the start", [(99, GNSS_GONE), (101, RADIO_GONE)],
     105.5, "modem_down", -6.5),
    ("data path only: nothing earlier to go by", [(98.2, {"datapath": False})], 99.0, "first_bad_sample", None),
])
def test_loss_start_is_back_dated_to_the_first_evidence(name: str, phases: list[tuple[float, dict[str, Any]]],
                                                         start: float, evidence: str, lost_at_s: float | None) -> None:
    samples = polled(timeline(*phases, (130, GOOD), until=160), HEALTHY_POLL_S, offset_s=0.5)
    actions, _ = run(samples)
    begin, end = actions[0], actions[-1]
    assert (begin.kind, end.kind) == ("begin", "end")
    assert begin.start_t == pytest.approx(start) and end.start_t == begin.start_t
    assert begin.fields["start_evidence"] == end.fields["start_evidence"] == evidence
    first_bad = next(s.t for s in samples if c.connected(s) is False)
    # BEGIN comes with the first bad sample once the loss (from its back-dated start) lasted loss_min_s.
    assert begin.fields["detect_delay_s"] == pytest.approx(max(first_bad - start, R.loss_min_s), abs=1.01)
    assert end.fields["duration_s"] == pytest.approx(130 - start, abs=1.01)  # back at the next tick after 130
    if lost_at_s is not None:
        assert end.fields["gnss"]["lost_at_s"] == pytest.approx(lost_at_s)


def test_loss_start_table() -> None:
    """The pure rule on its own: (pre, first bad sample) → start and evidence."""
    pre = [Sample(t=float(t), modem=True, modem_t=float(t) - 0.5, signal_known=True, rsrp=-90.0, registered=True,
                  attached=True, fix=t < 97) for t in range(90, 101)]
    first = Sample(t=101.0, modem=True, modem_t=100.5, signal_known=True, registered=False, attached=False,
                   fix=False)
    # A fresh reading every tick: the one taken at 99.5 still said fine, so the fix lost at 97 is not the start.
    assert c.loss_start(pre, first, R) == (100.5, "modem_down")
    # Readings only every 5 s: the last fine one was taken at 95.5, the fix went at 97.
    stale = [x if x.t < 96 else replace(x, modem_t=95.5) for x in pre]
    assert c.loss_start(stale, first, R) == (97.0, "gnss_lost")
    # No modem at all: GNSS within together_s back-dates a data path loss.
    no_modem = [replace(x, modem=False, modem_t=None, registered=None, attached=None) for x in pre]
    dp = Sample(t=101.0, datapath=False, fix=False)
    assert c.loss_start(no_modem, dp, R) == (97.0, "gnss_lost")
    assert c.loss_start(no_modem, replace(dp, t=120.0), R) == (120.0, "first_bad_sample")
