"""The agent's one health verdict: `healthy | degraded | failing`, with the reasons (code, text, since).

Everything that says how the agent is doing reads this: the control socket's `status` (and so `icvq status`
text and `--json`, `icvq flush --wait`, `icvq dump`), the systemd STATUS= line and the `agent.health` record.
No reader re-derives it, so they cannot disagree.

`verdict(facts)` is a pure function over a frozen `Facts` snapshot, tested from a table
(tests/field/test_health_verdict.py). `gather(daemon)` at the bottom is the edge that takes the snapshot: it reads
in-memory attributes only (never the spool's database), so the main thread may call it for STATUS= every
2 s and the pipeline thread for the health record, without touching the spool (docs/architecture.md).

Severity: `failing` means data is at risk or not being collected (records only in RAM, a stalled pipeline,
a probe giving up); `degraded` means data is collected and kept but something needs a look (no broker,
no backend subscribed, a probe retrying, clock unsynced); a `note` is shown but does not change the verdict
(drops that happened at some time in the spool's life). To add a state worth showing: a field in `Facts`,
a rule in `verdict()`, a row in the table test, a line in docs/field-guide.md.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import field
from typing import TYPE_CHECKING, Any

from .dataclass_shared import dataclass

if TYPE_CHECKING:
    from .daemonview import DaemonView

HEALTHY, DEGRADED, FAILING = "healthy", "degraded", "failing"
NOTE = "note"
_RANK = {HEALTHY: 0, NOTE: 0, DEGRADED: 1, FAILING: 2}

PIPELINE_STALL_S = 30.0     # the watchdog is pinged only below this (daemon.run_forever)
ACK_STALL_S = 120.0         # connected with batches in flight and no PUBACK for this long
SPOOL_FILL_WARN = 0.8       # share of [spool] max_mib; beyond it eviction (counted drops) is near
# Cars start without a time source (no GNSS fix, no network): records carry `synced=false` and are re-anchored
# later, so an unsynced clock is only a note at first. timesyncd or chrony need well under a minute once
# the link is up; unsynced 10 min after it was first seen so means the time source is broken.
CLOCK_UNSYNCED_GRACE_S = 600.0
# Spool trouble states (agent.spool.SpoolTrouble.state) that still write to disk: merely worth a look.
SPOOL_TROUBLE_DEGRADED = frozenset({"low_headroom"})
# Connect refusals (agent/tls.py codes) that no retry can cure: the car keeps recording but will never deliver
# until someone installs a certificate or fixes the config, so they are failing, not merely offline.
REFUSALS_FAILING = frozenset({"plaintext_refused", "client_cert_revoked", "client_cert_expired",
                              "client_cert_required", "client_cert_unknown_ca", "client_cert_refused",
                              "client_key_mismatch", "config"})
NOT_AUTHORIZED = 0x87      # MQTT 5 reason code: what a broker ACL answers
CERT_RENEW_S = 30 * 86400.0  # a client certificate this close to its end is worth renewing (docs/security.md)


@dataclass(frozen=True)
class Reason:
    code: str                   # stable, for scripts: offline, no_subscriber, spool_read_only, ...
    severity: str               # failing | degraded | note
    text: str                   # one line for a human, without the time (renderers add since/age)
    since: float | None = None  # wall-clock seconds when it began; None when unknown

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "severity": self.severity, "text": self.text, "since": self.since}


@dataclass(frozen=True)
class Verdict:
    state: str
    reasons: tuple[Reason, ...] = ()
    now: float = 0.0

    @property
    def problems(self) -> tuple[Reason, ...]:
        """The reasons that made the verdict (notes left out), worst first."""
        return tuple(r for r in self.reasons if r.severity != NOTE)

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "reasons": [r.as_dict() for r in self.reasons], "at": self.now}

    def line(self) -> str:
        """One line for systemd's STATUS= (and `systemctl status`): the state and the worst reasons."""
        probs = self.problems
        if not probs:
            return HEALTHY
        parts = [r.text + (f" for {age(self.now - r.since)}" if r.since is not None else "") for r in probs[:3]]
        more = f" (+{len(probs) - 3} more)" if len(probs) > 3 else ""
        return f"{self.state}: " + "; ".join(parts) + more


@dataclass(frozen=True)
class ProbeFact:
    name: str
    state: str                  # starting | ok | degraded | error (agent.probe.Probe)
    last_error: str = ""
    since: float | None = None


@dataclass(frozen=True)
class SpoolFact:
    """`agent.spool.SpoolTrouble` as the verdict needs it (state, since, detail)."""

    state: str
    since: float | None
    detail: str


@dataclass(frozen=True)
class Facts:
    now: float                                  # wall clock of the snapshot
    pipeline_age_s: float = 0.0                 # since the pipeline thread last turned
    connected: bool = True
    connected_since: float | None = None
    offline_since: float | None = None
    uplink_error: str = ""
    broker: str = ""
    # First PUBACK 0x10 of the current run of them. Only set with [uplink] retry_no_subscribers = true: with
    # it false, 0x10 is the normal answer of a broker that forwards by rule engine, not a fault.
    no_subscribers_since: float | None = None
    held_batches: int = 0                       # sealed batches waiting in the spool
    inflight: int = 0
    last_ack_wall: float | None = None
    spool_trouble: SpoolFact | None = None
    spool_bytes: int = 0
    spool_max_bytes: int = 0
    memory_records: int = 0
    drops: Mapping[str, int] = field(default_factory=dict)
    probes: tuple[ProbeFact, ...] = ()
    clock_synced: bool = True
    clock_unsynced_since: float | None = None
    history_error: str = ""
    transport: str = ""                         # agent/tls.py: tls | plaintext-loopback | -allowed | -refused
    connect_error_code: str = ""                # the uplink's last_connect_error (cleared on connect)
    connect_error_since: float | None = None
    client_cert_not_after: float | None = None  # the uplink's client certificate's notAfter (agent/tls.py)
    campaigns: tuple[str, ...] = ()             # backend collection campaigns running (agent/blackbox)
    refused_code: int | None = None             # PUBACK reason code refusing our batches since the last success
    refused_since: float | None = None


def verdict(f: Facts) -> Verdict:
    """The verdict and its reasons, worst first (failing, then degraded, then notes; stable within each)."""
    out: list[Reason] = []
    if f.pipeline_age_s >= PIPELINE_STALL_S:
        out.append(Reason("pipeline_stalled", FAILING, f"pipeline stalled: last turn {age(f.pipeline_age_s)} ago"
                          "; systemd's watchdog restarts the agent", f.now - f.pipeline_age_s))
    st = f.spool_trouble
    if st is not None:
        sev = DEGRADED if st.state in SPOOL_TROUBLE_DEGRADED else FAILING
        held = f"; {f.memory_records} records held in memory" if sev == FAILING else ""
        out.append(Reason(f"spool_{st.state}", sev, f"spool {st.state.replace('_', ' ')}: {st.detail}{held}",
                          st.since))
    for p in f.probes:
        if p.state == "error":
            out.append(Reason("probe_failing", FAILING, f"probe {p.name} failing: {p.last_error or '?'}", p.since))
        elif p.state == "degraded":
            out.append(Reason("probe_degraded", DEGRADED, f"probe {p.name} degraded: {p.last_error or '?'}",
                              p.since))
    if not f.connected and f.connect_error_code in REFUSALS_FAILING:
        code = {"plaintext_refused": "plaintext_refused", "config": "uplink_config"}.get(
            f.connect_error_code, "certificate_refused")
        out.append(Reason(code, FAILING,
                          f"uplink held ({f.broker}): {f.uplink_error}; records wait in the spool",
                          f.connect_error_since))
    elif not f.connected:
        out.append(Reason("offline", DEGRADED, f"uplink offline ({f.broker}): "
                          f"{f.uplink_error or 'not connected yet'}", f.offline_since))
    elif f.refused_code is not None:
        # Refused batches are dropped after 5 refusals over 10 min (docs/wire-format.md): nothing of this car arrives.
        hint = (": the broker's ACL does not let this client write its topics (is the client certificate's CN "
                "the vehicle id?)" if f.refused_code == NOT_AUTHORIZED else "")
        out.append(Reason("batches_refused", FAILING, f"the broker refuses our batches (PUBACK {f.refused_code:#04x})"
                          f"{hint}; each is dropped after 5 refusals over 10 min", f.refused_since))
    elif f.no_subscribers_since is not None:
        out.append(Reason("no_subscriber", DEGRADED, "no backend subscribed: the broker answers PUBACK 0x10 "
                          f"(no matching subscribers); {f.held_batches} batches held, resent with back-off",
                          f.no_subscribers_since))
    elif f.inflight:
        last = f.last_ack_wall or f.connected_since
        if last is not None and f.now - last >= ACK_STALL_S:
            out.append(Reason("acks_stalled", DEGRADED, f"connected but nothing acknowledged; {f.inflight} "
                              "batches in flight", last))
    if f.spool_max_bytes and f.spool_bytes > SPOOL_FILL_WARN * f.spool_max_bytes:
        out.append(Reason("spool_filling", DEGRADED, f"spool {100 * f.spool_bytes / f.spool_max_bytes:.0f} % "
                          "full; the oldest metrics are evicted (counted) beyond 100 %"))
    if not f.clock_synced:
        since = f.clock_unsynced_since
        late = since is not None and f.now - since >= CLOCK_UNSYNCED_GRACE_S
        out.append(Reason("clock_unsynced", DEGRADED if late else NOTE, "wall clock not synchronised (records "
                          "are re-anchored when it is)", since))
    cert_end = f.client_cert_not_after
    if cert_end is not None and cert_end - f.now < CERT_RENEW_S and f.connect_error_code not in REFUSALS_FAILING:
        when = time.strftime("%Y-%m-%d", time.gmtime(cert_end))
        text = (f"client certificate expired on {when}" if cert_end <= f.now else
                f"client certificate expires on {when}, in {age(cert_end - f.now)}")
        out.append(Reason("client_cert_expiring", DEGRADED, text + ": install a renewed one (docs/security.md)"))
    if f.transport == "plaintext-allowed":
        out.append(Reason("plaintext_allowed", NOTE, "uplink WITHOUT TLS to a non-loopback broker "
                          "(uplink.allow_plaintext = true)"))
    if f.history_error:
        out.append(Reason("history_unwritable", DEGRADED, f"local history not writable: {f.history_error}"))
    if f.campaigns:
        out.append(Reason("campaigns_active", NOTE, f"{len(f.campaigns)} collection campaign(s) from the backend "
                          f"running: {', '.join(f.campaigns)}"))
    if f.drops:
        n = sum(f.drops.values())
        out.append(Reason("dropped", NOTE, f"{n} records dropped since the spool was created: "
                          + ", ".join(f"{k} {v}" for k, v in sorted(f.drops.items()))))
    out.sort(key=lambda r: -_RANK[r.severity])
    state = max((r.severity for r in out), key=lambda s: _RANK[s], default=HEALTHY)
    return Verdict(HEALTHY if state == NOTE else state, tuple(out), f.now)


def age(seconds: float) -> str:
    """3s, 4m12s, 2h03m, 3d04h: short enough for a table or STATUS=, unambiguous enough for a ticket."""
    s = int(max(0.0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


# ------------------------------------------------------------------------------------------------ edge
class Onsets:
    """Since when a condition holds, for facts whose source keeps no timestamp (the clock's sync state).
    Benign races: two threads noting the same onset differ by microseconds."""

    def __init__(self) -> None:
        self._since: dict[str, float] = {}

    def __call__(self, name: str, active: bool, now: float) -> float | None:
        if not active:
            self._since.pop(name, None)
            return None
        return self._since.setdefault(name, now)


def gather(d: DaemonView, now: float, mono: float) -> Facts:
    """Snapshot the running daemon's facts: in-memory attributes only, safe from any thread."""
    pl, up, sp = d.pipeline, d.uplink, d.spool
    trouble = sp.trouble  # set whenever the spool is degraded (spool_trouble.block), with its own since
    spool_fact = None if trouble is None else SpoolFact(trouble.state, trouble.since, trouble.detail)
    synced = d.clock.synced()
    return Facts(
        now=now, pipeline_age_s=max(0.0, mono - pl.alive_mono),
        connected=up.connected, connected_since=up.connected_since, offline_since=up.offline_since,
        uplink_error=up.last_error, broker=f"{d.cfg.uplink.host}:{d.cfg.uplink.port}",
        no_subscribers_since=pl.no_subscribers_since, held_batches=sp.n_batches, inflight=pl.inflight,
        last_ack_wall=up.last_ack_wall, spool_trouble=spool_fact, spool_bytes=sp.bytes,
        spool_max_bytes=sp.cap_bytes,  # what the database may hold: its share of max_mib, headroom applied
        memory_records=sp.memory_records, drops=dict(sp.drops),
        probes=tuple(ProbeFact(p.name, s["state"], s.get("last_error") or "", s.get("since"))
                     for p in d.probes for s in [p.status()]),
        clock_synced=synced, clock_unsynced_since=d.onsets("clock_unsynced", not synced, now),
        history_error=d.history_error(), transport=up.transport,
        connect_error_code=(up.last_connect_error or {}).get("code", ""),
        connect_error_since=(up.last_connect_error or {}).get("since"),
        client_cert_not_after=up.client_cert_not_after,
        refused_code=pl.refusing[0] if pl.refusing else None, refused_since=pl.refusing[1] if pl.refusing else None,
        campaigns=tuple(bb.campaign_ids()) if (bb := getattr(d, "blackbox", None)) is not None else ())
