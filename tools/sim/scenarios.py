"""Connectivity-loss scenarios as matched tracks: GNSS route, modem state and data path over scenario time.

Times are scenario seconds. A scenario is played `speed` times faster than real time (runner.py): the route
has one NMEA epoch per scenario second, the modem is asked for its state at the current scenario time, and
the agent's time thresholds are divided by `speed`. `expect` holds the figures in scenario seconds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .modem import ModemPoint
from .route import GnssPoint, drive

START = (47.2692, 11.4041)  # Innsbruck, heading east on the A12
NO_SIGNAL = ModemPoint(rsrp=None, rsrq=None, rssi=None, snr=None, reg=2, attached=False)


@dataclass(frozen=True)
class Expect:
    """What the agent must report, in scenario seconds (tests convert with the replay's real pace)."""

    cause: str
    setting: str | None
    signal_back_at: float | None  # when the radio signal was usable again (None: it never went)
    to_registered_s: float
    to_attached_s: float


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    duration_s: float
    gnss: Callable[[float], GnssPoint]
    modem: Callable[[float], ModemPoint]
    outages: tuple[tuple[float, float], ...]  # data path down in [a, b)
    expect: Expect
    speed: float = 10.0  # default time compression for tests

    def datapath(self, t: float) -> bool:
        return not any(a <= t < b for a, b in self.outages)


def _moving(speed_kmh: float, course: float = 90.0) -> Callable[[float, bool], GnssPoint]:
    def at(t: float, fix: bool) -> GnssPoint:
        lat, lon = drive(*START, course, speed_kmh, t)
        return GnssPoint(fix=fix, lat=lat, lon=lon, speed_kmh=speed_kmh, course=course)
    return at


def _between(t: float, a: float, b: float) -> bool:
    return a <= t < b


def tunnel() -> Scenario:
    """60 s tunnel at 80 km/h: GNSS, cellular and data path go together and come back together; the modem
    registers 2 s and attaches 3 s after the signal is back."""
    pos = _moving(80.0)
    enter, leave = 10.0, 70.0

    def modem(t: float) -> ModemPoint:
        if _between(t, enter, leave):
            return NO_SIGNAL
        if _between(t, leave, leave + 2):
            return ModemPoint(rsrp=-97.0, rsrq=-12.0, reg=2, attached=False)
        if _between(t, leave + 2, leave + 3):
            return ModemPoint(rsrp=-95.0, rsrq=-11.0, reg=1, attached=False)
        return ModemPoint()

    return Scenario("tunnel", "60 s tunnel at 80 km/h", 85.0, lambda t: pos(t, not _between(t, enter, leave)),
                    modem, ((enter, leave + 3),), Expect("tunnel", "tunnel", leave, 2.0, 3.0), speed=15.0)


def mountain() -> Scenario:
    """A coverage hole on a mountain road: GNSS keeps its fix while RSRP decays from -88 to -123 dBm over
    55 s; registration goes at 65 s, comes back 2 s after the signal returns at 105 s."""
    pos = _moving(50.0, course=120.0)
    decay, lost, back = 10.0, 65.0, 105.0

    def modem(t: float) -> ModemPoint:
        if t < decay:
            return ModemPoint(rsrp=-88.0)
        if t < lost:
            rsrp = -88.0 - 35.0 * (t - decay) / (lost - decay)
            return ModemPoint(rsrp=round(rsrp), rsrq=round(-9.0 - 9.0 * (t - decay) / (lost - decay)),
                              rssi=round(-57.0 - 30.0 * (t - decay) / (lost - decay)))
        if t < back:
            return NO_SIGNAL
        rsrp = min(-95.0, -114.0 + 2.0 * (t - back))
        if t < back + 2:
            return ModemPoint(rsrp=rsrp, reg=2, attached=False)
        if t < back + 3:
            return ModemPoint(rsrp=rsrp, reg=1, attached=False)
        return ModemPoint(rsrp=rsrp)

    return Scenario("mountain", "coverage hole on a mountain road (gradual decay, GNSS keeps its fix)", 118.0,
                    lambda t: pos(t, True), modem, ((lost, back + 3),), Expect("coverage", "coverage", back, 2.0, 3.0),
                    speed=15.0)


def terminal() -> Scenario:
    """After a 30 s tunnel the signal is back and the modem registers, but packet attach stays down for 3 min
    (a modem stuck in attach back-off): the network was back, the terminal was not."""
    pos = _moving(70.0)
    enter, leave, attach_back = 10.0, 40.0, 220.0

    def modem(t: float) -> ModemPoint:
        if _between(t, enter, leave):
            return NO_SIGNAL
        if _between(t, leave, leave + 2):
            return ModemPoint(rsrp=-92.0, reg=2, attached=False)
        if _between(t, leave + 2, attach_back):
            return ModemPoint(rsrp=-90.0, reg=1, attached=False)
        return ModemPoint()

    return Scenario("terminal", "terminal defect: attach stays down for 3 minutes after a tunnel", 232.0,
                    lambda t: pos(t, not _between(t, enter, leave)), modem, ((enter, attach_back),),
                    Expect("terminal", "tunnel", leave, 2.0, 180.0), speed=25.0)


def _tunnel_then_register(name: str, title: str, reg_after_s: float, cause: str) -> Scenario:
    """A 30 s tunnel at 80 km/h; once out, the signal is good at once but the modem registers only
    `reg_after_s` later and attaches 1 s after that. The MQTT session notices the loss 4 s into the tunnel
    (keep-alive), so the start must come from GNSS and the modem poll, not from the data path."""
    pos = _moving(80.0)
    enter, leave = 10.0, 40.0
    registered = leave + reg_after_s

    def modem(t: float) -> ModemPoint:
        if _between(t, enter, leave):
            return NO_SIGNAL
        if _between(t, leave, registered):
            return ModemPoint(rsrp=-92.0, rsrq=-11.0, reg=2, attached=False)
        if _between(t, registered, registered + 1):
            return ModemPoint(rsrp=-90.0, rsrq=-10.0, reg=1, attached=False)
        return ModemPoint()

    return Scenario(name, title, registered + 10.0, lambda t: pos(t, not _between(t, enter, leave)), modem,
                    ((enter + 4.0, registered + 1.0),),
                    Expect(cause, "tunnel", leave, reg_after_s, reg_after_s + 1.0), speed=15.0)


def tunnel_retry() -> Scenario:
    """After the tunnel the first attempt fails and the retry after T3411 works: registered 25 s after the
    signal (T3410 15 s + T3411 10 s). A healthy terminal: the cause stays `tunnel`."""
    return _tunnel_then_register("tunnel_retry", "tunnel, registered 25 s after the signal (one retry)", 25.0,
                                 "tunnel")


def slow_reattach() -> Scenario:
    """The field case: after the tunnel the signal is good but the modem registers only 54 s later (two or
    more failed attempts in good signal). A terminal defect, in a tunnel setting."""
    return _tunnel_then_register("slow_reattach", "tunnel, registered 54 s after the signal (terminal)", 54.0,
                                 "terminal")


def backend() -> Scenario:
    """The radio is fine all along (registered, attached, good signal, GNSS fix); the backend is away 40 s."""
    pos = _moving(30.0)
    return Scenario("backend", "backend outage with a good radio", 60.0, lambda t: pos(t, True),
                    lambda t: ModemPoint(), ((10.0, 50.0),), Expect("network", None, None, 0.0, 0.0),
                    speed=15.0)


SCENARIOS: dict[str, Callable[[], Scenario]] = {
    "tunnel": tunnel, "mountain": mountain, "terminal": terminal, "backend": backend, "tunnel_retry": tunnel_retry,
    "slow_reattach": slow_reattach}
