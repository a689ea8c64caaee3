"""Build link-probe timelines from phases: a phase changes some fields from its start time on."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from agent.probes.link.episode import Action, LossTracker
from agent.probes.link.sample import Sample
from agent.probes.link.settings import RulesConfig

GOOD: dict[str, Any] = dict(modem=True, signal_known=True, rsrp=-85.0, rsrq=-9.0, registered=True, attached=True,
                            datapath=True, fix=True, lat=47.0, lon=11.0, speed_kmh=80.0, tech="lte")
# Shorthands for phase changes.
CELL_GONE: dict[str, Any] = dict(rsrp=None, rsrq=None, registered=False, attached=False, datapath=False)
CELL_BACK: dict[str, Any] = dict(rsrp=-90.0, rsrq=-10.0)
GNSS_GONE: dict[str, Any] = dict(fix=False, lat=None, lon=None, speed_kmh=None)
GNSS_BACK: dict[str, Any] = dict(fix=True, lat=47.01, lon=11.02, speed_kmh=70.0)


def timeline(*phases: tuple[float, dict[str, Any]], until: float, step: float = 1.0,
             ramp: tuple[float, float, float, float] | None = None) -> list[Sample]:
    """Samples every `step` s from 0 to `until`. `ramp` = (t0, t1, from_dbm, to_dbm) overrides RSRP linearly
    while the phase state still has a signal. A PUBACK arrives just before each sample while the data path
    is up (the agent publishes continuously)."""
    state = dict(GOOD)
    todo = sorted(phases, key=lambda p: p[0])
    out: list[Sample] = []
    last_ack: float | None = None
    t = 0.0
    while t <= until + 1e-9:
        while todo and todo[0][0] <= t + 1e-9:
            state.update(todo.pop(0)[1])
        fields = dict(state)
        if ramp and ramp[0] <= t <= ramp[1] and fields["rsrp"] is not None:
            t0, t1, a, b = ramp
            fields["rsrp"] = a + (b - a) * min(1.0, (t - t0) / (t1 - t0))
        if fields["datapath"]:
            last_ack = t - 0.1
        out.append(Sample(t=round(t, 3), last_ack_t=last_ack, **fields))
        t += step
    return out


MODEM_FIELDS = ("modem", "signal_known", "rsrp", "rsrq", "rssi", "snr", "nr_rsrp", "nr_rsrq", "nr_snr", "tech",
                "reg", "registered", "attached")


def polled(samples: list[Sample], every_s: float, offset_s: float = 0.0) -> list[Sample]:
    """The modem as the probe sees it: polled every `every_s` from `offset_s` on, each tick carries the latest
    reading (taken at `modem_t`) while GNSS and the data path are fresh every tick."""
    out: list[Sample] = []
    reading: Sample | None = None
    next_poll = offset_s
    by_t = {s.t: s for s in samples}
    for s in samples:
        while next_poll <= s.t + 1e-9:
            # The state at the poll: the last sample at or before it.
            reading = by_t[max(t for t in by_t if t <= next_poll + 1e-9)]
            reading = replace(reading, modem_t=round(next_poll, 3))
            next_poll += every_s
        if reading is None:
            out.append(replace(s, modem=False, registered=None, attached=None, signal_known=False, rsrp=None))
            continue
        out.append(replace(s, modem_t=reading.modem_t, **{f: getattr(reading, f) for f in MODEM_FIELDS}))
    return out


def run(samples: list[Sample], rules: RulesConfig | None = None, wait_ack: bool = True,
        **kw: Any) -> tuple[list[Action], LossTracker]:
    ids = iter(range(1, 1000))
    tr = LossTracker(rules or RulesConfig(), wait_ack=wait_ack, new_id=lambda: next(ids), **kw)
    actions = [a for s in samples for a in tr.feed(s)]
    return actions, tr


def shift(samples: list[Sample], dt: float) -> list[Sample]:
    return [replace(s, t=s.t + dt, last_ack_t=None if s.last_ack_t is None else s.last_ack_t + dt) for s in samples]
