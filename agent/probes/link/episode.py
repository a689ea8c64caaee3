"""The loss-episode state machine: samples in, begin/end/overdue actions out. No clocks, no I/O.

    unknown ──connected──▶ up ──any of registered/attached/datapath False──▶ pending
    pending ──back within loss_min_s──▶ up (a "blip", counted)       pending ──loss_min_s──▶ open (BEGIN)
    open ──connected, then first PUBACK (or ack_wait_s)──▶ up (END)   open ──terminal evidence──▶ OVERDUE once

Episodes start only after the link was up once since the probe started: every boot would otherwise open one
while the modem registers. The start is back-dated to the first evidence of the loss (classify.loss_start:
the GNSS fix going, the signal dropping, the modem reading that showed the radio down), the way display
episodes start at their evidence; `loss_min_s` and every figure count from it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import field
from typing import Any

from ...counters import Counters
from ...dataclass_shared import dataclass
from ...records import new_episode_id
from . import classify as c
from .privacy import DEFAULT_PLACE, Place
from .sample import Sample
from .settings import RulesConfig


@dataclass(frozen=True)
class Action:
    kind: str  # "begin" | "end" | "overdue"
    episode: int
    fields: dict[str, Any] = field(default_factory=dict)
    start_t: float = 0.0  # the episode's back-dated start (probe clock), for the wall-clock `start`


class LossTracker:
    def __init__(self, rules: RulesConfig, *, wait_ack: bool, max_timeline: int = 5000, place: Place = DEFAULT_PLACE,
                 new_id: Callable[[], int] = new_episode_id, counters: Counters | None = None) -> None:
        self.rules = rules
        self.wait_ack = wait_ack
        self.max_timeline = max_timeline
        self.place = place
        self.new_id = new_id
        self.counters = counters or Counters()
        self.state = "unknown"
        self.recent: deque[Sample] = deque()
        self.pre: list[Sample] = []
        self.ep: list[Sample] = []
        self.episode = 0
        self.start = 0.0              # back-dated start of the pending/open episode
        self.start_evidence = ""      # what it was back-dated to (classify.START_EVIDENCE)
        self.up_at: float | None = None
        self.overdue_sent = False
        self._cell_lost = False

    @property
    def busy(self) -> bool:
        """Pending or open: sources should poll at their episode rate."""
        return self.state in ("pending", "open")

    @property
    def since(self) -> float | None:
        return self.start if self.busy and self.ep else None

    # ------------------------------------------------------------------------------------------ feed
    def feed(self, s: Sample) -> list[Action]:
        conn = c.connected(s)
        if self.state in ("unknown", "up"):
            if self.state == "up" and conn is False:
                self.state, self.pre, self.ep = "pending", list(self.recent), [s]
                self.start, self.start_evidence = c.loss_start(self.pre, s, self.rules)
                self.up_at, self.overdue_sent, self._cell_lost = None, False, c.radio_down(s, self.rules)
                return self._maybe_open(s)
            if conn is True:
                self.state = "up"
            self._remember(s)
            return []
        self._append(s)
        if self.state == "pending":
            if conn is True:
                self.counters.inc("blips")
                self.state = "up"
                for x in self.ep:
                    self._remember(x)
                self.ep = []
                return []
            return self._maybe_open(s)
        return self._while_open(s, conn)

    def close(self, t: float) -> list[Action]:
        """The probe stops: an open episode ends now, marked so the backend knows it was cut short."""
        if self.state != "open":
            return []
        return [self._end(t, {"ended_by": "agent_stop"})]

    # ------------------------------------------------------------------------------------- internals
    def _maybe_open(self, s: Sample) -> list[Action]:
        if s.t - self.start < self.rules.loss_min_s:
            return []
        self.state = "open"
        self.episode = self.new_id()
        return [Action("begin", self.episode, self._begin_fields(s), self.start)]

    def _while_open(self, s: Sample, conn: bool | None) -> list[Action]:
        if conn is False:
            self.up_at = None
        elif conn is True and self.up_at is None:
            self.up_at = s.t
        if self.up_at is not None:
            acked = c.first_ack(self.ep) is not None
            if not self.wait_ack or acked or s.t - self.up_at >= self.rules.ack_wait_s:
                return [self._end(s.t, {"ended_by": "recovered"})]
        if not self.overdue_sent and not c.is_network(self.ep, self.rules):
            evidence = c.terminal_evidence(self.pre, self.ep, self.rules, s.t, self.start)
            if evidence:
                self.overdue_sent = True
                return [Action("overdue", self.episode,
                               {"cause": "terminal", "evidence": evidence,
                                "since_s": round(s.t - self.start, 2)}, self.start)]
        return []

    def _end(self, t: float, extra: dict[str, Any]) -> Action:
        v = c.classify(self.pre, self.ep, self.rules, horizon=t, place=self.place, start=self.start)
        a = Action("end", self.episode, {"cause": v.cause, "setting": v.setting, **v.fields,
                                         "start_evidence": self.start_evidence, **extra}, self.start)
        self.state = "up"
        for x in self.ep[-2:]:
            self._remember(x)
        self.pre, self.ep = [], []
        return a

    def _begin_fields(self, s: Sample) -> dict[str, Any]:
        start = self.start
        both = [*self.pre, *self.ep]
        last_signal = next((x for x in reversed(self.pre) if x.signal_known), None)
        return {
            "lost": [n for n in ("registered", "attached", "datapath") if any(getattr(x, n) is False
                                                                                for x in self.ep)],
            "detect_delay_s": round(s.t - start, 2),
            "start_evidence": self.start_evidence,
            "entry": c.position(c.last_fix(both, start), start, self.place),
            "gnss_fix": s.fix,
            "trend": c.trend(both, start, self.rules),
            "tech": last_signal.tech if last_signal else None,
        }

    def _remember(self, s: Sample) -> None:
        self.recent.append(s)
        keep = self.rules.trend_window_s + self.rules.together_s
        while self.recent and self.recent[0].t < s.t - keep:
            self.recent.popleft()

    def _key(self, s: Sample) -> tuple[Any, ...]:
        # Until the cellular side is lost the signal level matters for the trend; afterwards only states do.
        level = None if self._cell_lost else c.rsrp_of(s) if c.rsrp_of(s) is not None else s.rssi
        return (s.modem, c.usable(s, self.rules), s.registered, s.attached, s.datapath, s.fix, s.last_ack_t,
                s.iface_up, level)

    def _append(self, s: Sample) -> None:
        """Run-length compression: of a run of equal states only its first and last sample are kept."""
        self._cell_lost = self._cell_lost or c.radio_down(s, self.rules)
        key = self._key(s)
        ep = self.ep
        if len(ep) >= 2 and self._key(ep[-1]) == key == self._key(ep[-2]):
            ep[-1] = s
        elif len(ep) >= self.max_timeline:
            self.counters.inc("timeline_full")
            ep[-1] = s
        else:
            ep.append(s)
