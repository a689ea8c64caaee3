"""Pure rules over one episode's timeline: why connectivity was lost and how the terminal recovered.

Input: the samples of the trend window before the loss (`pre`) and the episode's own samples (`ep`, starting
with the first bad one and ending with the last one seen). No clocks, no I/O: tests feed tables of timelines.

Causes, in the order they are tried (docs/link.md has the reasons):
- network:  the radio stayed usable, registered and attached; only the data path went.
- terminal: the signal came back but registration or attach stayed away longer than `defect_after_s`, or the
            data path longer than `datapath_defect_after_s` after attach (or the modem stopped answering).
            Tried before tunnel/coverage: a 12-minute T3402 gap after a tunnel is the terminal's doing.
- tunnel:   GNSS fix and cellular went within `together_s` of each other while moving, and came back
            within `together_s` of each other.
- coverage: GNSS kept its fix while the signal decayed (by `decay_db`, to below "weak") into the loss.
- unknown:  anything else, e.g. no GNSS, or no modem information.
`setting` keeps tunnel/coverage even when the cause is the terminal, so "stuck after a tunnel" stays visible.

The loss start (`loss_start`) is back-dated from the first bad sample to the first evidence of the loss: the
GNSS fix going, the signal dropping, the modem reading that showed the radio down (a reading taken up to one
healthy poll, 5 s, before the tick that saw it). Never before the last modem reading that showed the radio
fine, never more than `together_s` back. Every figure counts from that start.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import field
from typing import Any

from ...dataclass_shared import dataclass
from .privacy import DEFAULT_PLACE, Place, fix_fields
from .sample import Sample
from .settings import RulesConfig as Rules

Pred = Callable[[Sample], bool]


@dataclass(frozen=True)
class Verdict:
    cause: str
    setting: str | None
    fields: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- per sample
def rsrp_of(s: Sample) -> float | None:
    """The better of LTE and NR RSRP: in NSA the LTE anchor carries the session, in SA the NR cell does."""
    vals = [v for v in (s.rsrp, s.nr_rsrp) if v is not None]
    return max(vals) if vals else None


def usable(s: Sample, r: Rules) -> bool | None:
    if not s.modem or not s.signal_known:
        return None
    rsrp = rsrp_of(s)
    if rsrp is not None:
        return rsrp >= r.usable_rsrp_dbm
    if s.rssi is not None:
        return s.rssi >= r.usable_rssi_dbm
    return False  # the modem answered the signal query with "nothing heard"


def radio_down(s: Sample, r: Rules) -> bool:
    return usable(s, r) is False or s.registered is False


def reading_t(s: Sample) -> float:
    """When the modem reading behind `s` was taken (never after the tick that used it)."""
    return s.t if s.modem_t is None else min(s.modem_t, s.t)


def radio_fine(s: Sample, r: Rules) -> bool:
    """The modem said all is well: a usable signal (or no signal query), registered and attached."""
    return s.modem and usable(s, r) is not False and s.registered is not False and s.attached is not False


def connected(s: Sample) -> bool | None:
    vals = (s.registered, s.attached, s.datapath)
    if all(v is None for v in vals):
        return None
    return not any(v is False for v in vals)


# ------------------------------------------------------------------------------------------- timelines
def back_at(samples: Sequence[Sample], pred: Pred, when: Callable[[Sample], float] | None = None) -> float | None:
    """Start of the final run of samples where `pred` holds (`when` of its first sample, by default its `t`);
    None when the last sample fails it."""
    t = None
    for s in reversed(samples):
        if not pred(s):
            break
        t = s.t if when is None else when(s)
    return t


def first_at(samples: Sequence[Sample], pred: Pred) -> float | None:
    return next((s.t for s in samples if pred(s)), None)


def _r2(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def signal_back(ep: Sequence[Sample], r: Rules, start: float) -> tuple[bool, float | None]:
    """(signal was lost, when it was usable again for good). Never lost → back at the loss `start`."""
    lost = any(usable(s, r) is False for s in ep)
    if not lost:
        return False, start
    return True, back_at(ep, lambda s: usable(s, r) is not False)


def _field_is(name: str, value: bool | None) -> Pred:
    return lambda s: getattr(s, name) is value


def _field_not_false(name: str) -> Pred:
    return lambda s: getattr(s, name) is not False


def back_of(ep: Sequence[Sample], name: str) -> float | None:
    """When `name` was back for good; None when it is still down or never known."""
    if all(getattr(s, name) is None for s in ep):
        return None
    return back_at(ep, _field_not_false(name))


def first_ack(ep: Sequence[Sample]) -> float | None:
    """The first PUBACK after the last moment the link was bad (acks cannot happen while it is down)."""
    last_bad = max((s.t for s in ep if connected(s) is False), default=ep[0].t)
    return next((s.last_ack_t for s in ep
                 if s.t >= last_bad and s.last_ack_t is not None and s.last_ack_t > last_bad), None)


# Which evidence the start was back-dated to, from the most to the least direct (ties go to the first).
START_EVIDENCE = ("modem_down", "signal_lost", "gnss_lost", "first_bad_sample")


def loss_start(pre: Sequence[Sample], first: Sample, r: Rules) -> tuple[float, str]:
    """(start, evidence): the first evidence of the loss that `first` (the first bad sample) detected.

    Candidates: the run of modem readings up to `first` that showed registration or attach gone
    (`modem_down`) or the signal unusable (`signal_lost`), each at the time its reading was taken; the
    fix → no-fix transition that began the run of no-fix samples up to `first` (`gnss_lost`). Bounds: after
    the last modem reading that showed the radio fine (it contradicts any earlier evidence) and within
    `together_s` of `first` (a fix lost in a car park minutes ago is not this loss)."""
    both = [*pre, first]
    floor = first.t - r.together_s
    for s in both:
        if radio_fine(s, r):
            floor = max(floor, reading_t(s))
    cands = [(first.t, "first_bad_sample")]
    down = back_at(both, lambda s: s.modem and (s.registered is False or s.attached is False), reading_t)
    weak = back_at(both, lambda s: s.modem and usable(s, r) is False, reading_t)
    cands += [(t, name) for t, name in ((down, "modem_down"), (weak, "signal_lost")) if t is not None]
    g = fix_lost_at(both)
    if g is not None:
        cands.append((g, "gnss_lost"))
    t, name = min(((t, n) for t, n in cands if t > floor or n == "first_bad_sample"),
                  key=lambda c: (c[0], START_EVIDENCE.index(c[1])))
    return t, name


def fix_lost_at(samples: Sequence[Sample]) -> float | None:
    """The fix → no-fix transition that began the final run of no-fix samples; None when the last sample
    has a fix (or no GNSS) or the run reaches back past the first sample (its beginning was not seen)."""
    began = back_at(samples, lambda s: s.fix is False)
    if began is None:
        return None
    before = [s for s in samples if s.t < began]
    return began if before and before[-1].fix is True else None


# --------------------------------------------------------------------------------------------- evidence
def trend(pre: Sequence[Sample], upto: float, r: Rules) -> dict[str, Any]:
    """Signal in the window before the loss: RSRP when the modem gives it, else RSSI."""
    window = [s for s in pre if s.t <= upto and s.t >= upto - r.trend_window_s]
    pts = [(s.t, v) for s in window for v in [rsrp_of(s)] if v is not None]
    metric = "rsrp"
    if not pts:
        pts = [(s.t, s.rssi) for s in window if s.rssi is not None]
        metric = "rssi"
    if not pts:
        return {}
    vals = [v for _, v in pts]
    out: dict[str, Any] = {"metric": metric, "n": len(pts), "first": round(vals[0], 1), "last": round(vals[-1], 1),
                           "min": round(min(vals), 1), "max": round(max(vals), 1)}
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mv = sum(vals) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    if n >= 2 and var > 0:
        out["slope_db_per_min"] = round(60 * sum((t - mt) * (v - mv) for t, v in pts) / var, 2)
    return out


def decayed(tr: dict[str, Any], r: Rules) -> bool:
    if not tr:
        return False
    weak = r.weak_rsrp_dbm if tr["metric"] == "rsrp" else r.weak_rssi_dbm
    return bool(tr["last"] <= weak and tr["max"] - tr["last"] >= r.decay_db)


def position(s: Sample | None, ref_t: float, place: Place) -> dict[str, Any]:
    """A fix as episode fields, coarsened by privacy.py (the only place positions become fields)."""
    if s is None or not place.send:
        return {}
    return {"age_s": _r2(max(0.0, ref_t - s.t)), **fix_fields(place, s.lat, s.lon, s.alt, s.speed_kmh)}


def last_fix(samples: Sequence[Sample], upto: float) -> Sample | None:
    return next((s for s in reversed(samples) if s.t <= upto and s.fix is True), None)


def gnss_lost_at(both: Sequence[Sample], around: float, r: Rules) -> float | None:
    """A fix → no-fix transition within `together_s` of `around`."""
    prev: bool | None = None
    for s in both:
        if s.t > around + r.together_s:
            break
        if s.fix is False and prev is True and s.t >= around - r.together_s:
            return s.t
        if s.fix is not None:
            prev = s.fix
    return None


# ---------------------------------------------------------------------------------------------- causes
def _delay(ep: Sequence[Sample], name: str, since: float, horizon: float) -> float:
    """How long after `since` the field stayed away (0 when it was never down after `since`)."""
    if not any(getattr(s, name) is False for s in ep if s.t >= since):
        return 0.0
    b = back_at(ep, _field_not_false(name))
    return (b if b is not None else horizon) - since


def _longest_silence(ep: Sequence[Sample], horizon: float) -> float:
    longest, began = 0.0, None
    for s in ep:
        if not s.modem:
            began = s.t if began is None else began
        elif began is not None:
            longest, began = max(longest, s.t - began), None
    if began is not None:
        longest = max(longest, horizon - began)
    return longest


def terminal_evidence(pre: Sequence[Sample], ep: Sequence[Sample], r: Rules, horizon: float,
                      start: float) -> list[str]:
    _, ref = signal_back(ep, r, start)
    out = []
    if any(s.modem for s in pre) and _longest_silence(ep, horizon) > r.defect_after_s:
        out.append("modem_silent")
    if ref is None:
        return out  # the signal is not back: nothing can be blamed on the terminal yet
    reg = _delay(ep, "registered", ref, horizon)
    att = _delay(ep, "attached", ref, horizon)
    if reg > r.defect_after_s:
        out.append("registration")
    if att > r.defect_after_s:
        out.append("attach")
    if _delay(ep, "datapath", ref + max(reg, att), horizon) > r.datapath_defect_after_s:
        out.append("datapath")
    return out


def is_network(ep: Sequence[Sample], r: Rules) -> bool:
    # "The radio was fine" needs the modem to say so; a missed poll or two is not a silence.
    modem_known = any(s.modem for s in ep) and _longest_silence(ep, ep[-1].t) <= r.defect_after_s
    radio_lost = any(radio_down(s, r) or s.attached is False for s in ep)
    return modem_known and not radio_lost and any(s.datapath is False for s in ep)


def is_tunnel(pre: Sequence[Sample], ep: Sequence[Sample], r: Rules) -> bool:
    if not any(s.fix is not None for s in ep):
        return False
    cell_lost = first_at(ep, lambda s: radio_down(s, r))
    if cell_lost is None:
        return False
    both = [*pre, *ep]
    g_lost = gnss_lost_at(both, cell_lost, r)
    if g_lost is None:
        return False
    entry = last_fix(both, g_lost)
    if entry is None or entry.speed_kmh is None or entry.speed_kmh < r.moving_min_kmh:
        return False
    sig_lost, cell_back = signal_back(ep, r, ep[0].t)
    if not sig_lost:
        cell_back = back_at(ep, lambda s: not radio_down(s, r))
    g_back = first_at(ep, lambda s: s.t > g_lost and s.fix is True)
    if cell_back is None or g_back is None:
        return False
    return abs(g_back - cell_back) <= r.together_s


def is_coverage(pre: Sequence[Sample], ep: Sequence[Sample], r: Rules) -> bool:
    fixes = [s.fix for s in ep if s.fix is not None]
    if not fixes or sum(fixes) / len(fixes) < r.gnss_keep_ratio:
        return False
    cell_lost = first_at(ep, lambda s: radio_down(s, r))
    if cell_lost is None:
        return False
    return decayed(trend([*pre, *ep], cell_lost, r), r)


# ---------------------------------------------------------------------------------------------- verdict
def classify(pre: Sequence[Sample], ep: Sequence[Sample], r: Rules, horizon: float | None = None,
             place: Place = DEFAULT_PLACE, start: float | None = None) -> Verdict:
    """`horizon` is "now" for an episode still open; by default the last sample. `start` is the back-dated
    loss start (`loss_start`) every figure counts from; by default the first bad sample."""
    if not ep:
        return Verdict("unknown", None, {})
    end = horizon if horizon is not None else ep[-1].t
    t0 = ep[0].t if start is None else start
    setting = "tunnel" if is_tunnel(pre, ep, r) else "coverage" if is_coverage(pre, ep, r) else None
    evidence: list[str] = []
    if is_network(ep, r):
        cause = "network"
    else:
        evidence = terminal_evidence(pre, ep, r, end, t0)
        cause = "terminal" if evidence else setting or "unknown"
    fields = {"duration_s": _r2(duration(ep, end, t0)), **figures(pre, ep, r, end, place, t0)}
    if evidence:
        fields["evidence"] = evidence
    return Verdict(cause, setting, fields)


def duration(ep: Sequence[Sample], horizon: float, start: float) -> float:
    back = back_at(ep, lambda s: connected(s) is not False)
    return (back if back is not None else horizon) - start


def figures(pre: Sequence[Sample], ep: Sequence[Sample], r: Rules, end: float, place: Place,
            start: float) -> dict[str, Any]:
    both = [*pre, *ep]
    sig_lost, ref = signal_back(ep, r, start)

    def since_ref(t: float | None) -> float | None:
        return None if t is None or ref is None else _r2(max(0.0, t - ref))

    ack = first_ack(ep)
    recovery = {
        "ref": "signal" if sig_lost else "start",
        "signal_back_s": _r2(ref - start) if ref is not None else None,
        "to_registered_s": since_ref(back_of(ep, "registered")),
        "to_attached_s": since_ref(back_of(ep, "attached")),
        "to_datapath_s": since_ref(back_of(ep, "datapath")),
        "to_ack_s": since_ref(ack),
    }
    fixes = [s.fix for s in ep if s.fix is not None]
    gnss: dict[str, Any] = {}
    if fixes:
        g_first = first_at(ep, _field_is("fix", False))
        # When the fix went: the transition that began the no-fix run the episode saw first, which may lie
        # before the loss start (then lost_at_s < 0); None when that transition was not seen.
        g_lost = None if g_first is None else fix_lost_at([s for s in both if s.t <= g_first])
        # The first return, not the last: a receiver flickers at a tunnel exit and in street canyons.
        g_back = first_at(ep, lambda s: g_first is not None and s.t > g_first and s.fix is True)
        gnss = {"fix_ratio": round(sum(fixes) / len(fixes), 2), "lost": g_first is not None,
                "lost_at_s": _r2(g_lost - start) if g_lost is not None else None,
                "back_at_s": _r2(g_back - start) if g_back is not None else None}
    cell_lost = first_at(ep, lambda s: radio_down(s, r))
    return {
        "signal_lost": sig_lost,
        "lost": [n for n in ("registered", "attached", "datapath") if any(getattr(s, n) is False for s in ep)],
        "entry": position(last_fix(both, start), start, place),
        "exit": position(last_fix(ep, end), end, place),
        "gnss": gnss,
        "trend": trend(both, cell_lost if cell_lost is not None else start, r),
        "recovery": recovery,
        # Only an interface that was there before can go down (a unit without wwan0 has nothing to lose).
        "iface_down": any(s.iface_up is True for s in pre) and any(s.iface_up is False for s in ep),
    }
