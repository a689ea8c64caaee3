"""The link probe: every tick, one Sample from the latest state of each source → the loss tracker → records.

Slow sources (modem, TCP probe) and the gpsd stream run on their own threads and only leave their latest
reading here, so the tick never blocks on a modem that takes seconds to answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import psutil

from ...probe import PeriodicProbe, ProbeContext
from ...records import Record, new_episode_id
from . import classify as c
from .datapath import TcpResult, ack_time, tcp_probe, uplink_up
from .episode import Action, LossTracker
from .gnss import GpsdClient
from .iface import read_iface
from .mmcli import Mmcli
from .modem_at import AtModem
from .poller import Poller
from .sample import IfaceReading, ModemReading, Sample, compose, context_fields
from .settings import Config, gpsd_address, split_host_port

EPISODE = "link.loss"
_SCALARS = (("link.rsrp_dbm", "rsrp"), ("link.rsrq_db", "rsrq"), ("link.rssi_dbm", "rssi"), ("link.snr_db", "snr"),
            ("link.nr_rsrp_dbm", "nr_rsrp"), ("link.nr_rsrq_db", "nr_rsrq"), ("link.nr_snr_db", "nr_snr"),
            ("link.rtt_ms", "rtt_ms"))
_WATCHED = ("registered", "attached", "datapath", "fix")


def _all_true(*vals: bool | None) -> bool | None:
    known = [v for v in vals if v is not None]
    return all(known) if known else None


class LinkProbe(PeriodicProbe):
    name = "link"

    def __init__(self, cfg: Config, ctx: ProbeContext, *, mono_now: Callable[[], float] = time.monotonic,
                 new_id: Callable[[], int] = new_episode_id) -> None:
        super().__init__(ctx, cfg.interval_s)
        self.cfg = cfg
        self.mono_now = mono_now
        self.tracker = LossTracker(cfg.rules, wait_ack=cfg.datapath.uplink, max_timeline=cfg.max_timeline,
                                   place=cfg.place, new_id=new_id, counters=self.counters)
        self.modem = self._modem_poller()
        self.gnss: GpsdClient | None = None
        if cfg.gnss.url:
            host, port = gpsd_address(cfg.gnss.url)
            self.gnss = GpsdClient(host, port, ctx.clock.mono, stale_s=cfg.gnss.stale_s,
                                   reconnect_s=cfg.gnss.reconnect_s, connect_timeout_s=cfg.gnss.connect_timeout_s,
                                   counters=self.counters, log=self.log)
        self.tcp: Poller[TcpResult] | None = None
        if cfg.datapath.tcp_target:
            host, port = split_host_port(cfg.datapath.tcp_target, 0)
            d = cfg.datapath
            self.tcp = Poller("tcp", lambda: tcp_probe(host, port, d.tcp_timeout_s), d.tcp_interval_s,
                              d.tcp_episode_interval_s, counters=self.counters, log=self.log)
        self._last_metrics = float("-inf")
        self._seen: dict[str, Any] = {}
        self._last: Sample | None = None

    def _modem_poller(self) -> Poller[ModemReading] | None:
        m = self.cfg.modem
        src: AtModem | Mmcli
        if m.kind == "at":
            src = AtModem(m.at_path, m.baud, m.timeout_s, self.counters, self.log)
        elif m.kind == "mmcli":
            src = Mmcli(m.mmcli, m.modem, m.timeout_s, m.signal_refresh_s, self.counters, self.log)
        else:
            return None
        return Poller("modem", src.read, m.interval_s, m.episode_interval_s, counters=self.counters, log=self.log,
                      close=src.close, now=self.ctx.clock.mono)

    # ------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        for s in (self.modem, self.gnss, self.tcp):
            if s is not None:
                s.start()
        super().start()

    def close(self) -> None:
        for s in (self.modem, self.gnss, self.tcp):
            if s is not None:
                s.stop()

    def stop(self, timeout_s: float = 3.0) -> None:
        super().stop(timeout_s)
        # An open episode ends with the agent, marked as cut short, so the backend never waits for it.
        self.emit_all(self._records(self.tracker.close(self.ctx.clock.mono())))

    def extra_status(self) -> dict[str, Any]:
        since = self.tracker.since
        s = self._last
        return {"link": self.tracker.state,
                "loss_for_s": None if since is None or s is None else round(s.t - since, 1),
                "modem": None if s is None else s.modem, "gnss_fix": None if s is None else s.fix}

    # ------------------------------------------------------------------------------------------ tick
    def take_sample(self) -> tuple[Sample, IfaceReading | None]:
        now = self.ctx.clock.mono()
        view = self.ctx.uplink()
        up = uplink_up(view) if self.cfg.datapath.uplink else None
        # Wait for a PUBACK before closing an episode only when there is an uplink to acknowledge anything.
        self.tracker.wait_ack = up is not None
        tcp = self.tcp.latest if self.tcp else None
        iface = None
        if self.cfg.iface.name:
            try:
                iface = read_iface(self.cfg.iface.name)
            except (OSError, psutil.Error):
                self.counters.inc("iface_errors")
        reading, read_t = self.modem.snapshot() if self.modem else (None, None)
        s = compose(now, reading, self.gnss.snapshot() if self.gnss else None, modem_t=read_t,
                    datapath=_all_true(up, tcp.ok if tcp else None), reach=tcp.ok if tcp else None,
                    rtt_ms=tcp.rtt_ms if tcp else None, last_ack_t=ack_time(view, now, self.mono_now()),
                    iface=iface)
        return s, iface

    def sample(self) -> Iterable[Record]:
        s, iface = self.take_sample()
        self.ctx.context("link", context_fields(s))
        out = self._records(self.tracker.feed(s))
        self._log_changes(s)
        self._last = s
        busy = self.tracker.busy
        for p in (self.modem, self.tcp):
            if p is not None:
                p.set_fast(busy)
        if s.t - self._last_metrics >= self.cfg.metrics_interval_s:
            self._last_metrics = s.t
            out.extend(self._metrics(s, iface))
        return out

    def _records(self, actions: list[Action]) -> list[Record]:
        out = []
        for a in actions:
            if a.kind in ("begin", "end"):
                # Back-dated to the first bad sample, on the wall clock (as display.* episodes do).
                clock = self.ctx.clock
                a.fields["start"] = round(clock.wall() - (clock.mono() - a.start_t), 3)
            if a.kind == "begin":
                self.log.warning("link lost (%s); episode %x", ", ".join(a.fields["lost"]) or "?", a.episode)
                out.append(self.rec.begin(EPISODE, a.fields, episode=a.episode))
            elif a.kind == "end":
                rec = a.fields.get("recovery", {})
                self.log.info("link back after %.1f s: cause %s; signal→registered %s s, →attached %s s, "
                              "→first ack %s s; episode %x", a.fields.get("duration_s") or 0.0, a.fields["cause"],
                              rec.get("to_registered_s"), rec.get("to_attached_s"), rec.get("to_ack_s"), a.episode)
                out.append(self.rec.end(EPISODE, a.episode, a.fields))
            else:
                self.log.warning("link recovery overdue: %s did not come back; episode %x",
                                 ", ".join(a.fields["evidence"]), a.episode)
                out.append(self.rec.event("link.recovery_overdue", {"episode": a.episode, **a.fields}))
        return out

    def _log_changes(self, s: Sample) -> None:
        now = {**{k: getattr(s, k) for k in _WATCHED}, "signal": c.usable(s, self.cfg.rules)}
        changed = {k: v for k, v in now.items() if self._seen.get(k, "?") != v}
        if changed and self._seen:
            self.log.info("link state: %s", ", ".join(f"{k} {self._seen.get(k)}→{v}" for k, v in changed.items()))
        back = [k for k in ("registered", "attached") if self._seen and changed.get(k) is True]
        if s.reach and self._last is not None and not self._last.reach:
            back.append("TCP target answers")
        if back:  # the uplink need not sit out its back-off: the way to the broker may be open again
            self.ctx.way_back(f"link probe: {', '.join(back)}")
        self._seen = now

    def _metrics(self, s: Sample, iface: IfaceReading | None) -> list[Record]:
        m = self.rec.metric
        out = [m(name, getattr(s, attr)) for name, attr in _SCALARS if getattr(s, attr) is not None]
        conn = c.connected(s)
        if conn is not None:
            out.append(m("link.connected", int(conn)))
        reading = self.modem.latest if self.modem else None
        if reading is not None:
            out.append(m("link.registration", {"state": reading.reg, "registered": reading.registered,
                                               "attached": reading.attached, "tech": reading.tech,
                                               "operator": reading.operator}))
        if self.gnss is not None:
            out.append(m("link.gnss", {"fix": s.fix, "sats_used": s.sats_used}))
        if s.datapath is not None:
            out.append(m("link.datapath", {"up": s.datapath, "reach": s.reach}))
        if iface is not None:
            out.append(m("link.iface", {"present": iface.present, "up": iface.up, "rx_bytes": iface.rx_bytes,
                                        "tx_bytes": iface.tx_bytes, "rx_errors": iface.rx_errors,
                                        "tx_errors": iface.tx_errors, "rx_dropped": iface.rx_dropped,
                                        "tx_dropped": iface.tx_dropped}))
        return out
