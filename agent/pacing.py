"""When the pipeline seals a batch and when its thread next needs to wake: pure functions, no clocks of their own.

Sealing (issue 13): events, episode begin/end and anything a flush or stop asks for go out at once; periodic
samples (metrics, the agent's health) wait up to `uplink.batch_linger_s` (default 300 s) so that many ticks
share one batch, one name table and one MQTT PUBLISH. With a 2 s linger every 10 s tick was its own ~400 B
batch plus ~100 B of MQTT and ~150 B of TCP/IP (1.83 MB per 8 h day); with 300 s the same values cost
≈ 0.3 MB (docs/performance.md, "Live traffic"). An event seals everything waiting with it, so metrics ride
along for free.

Wake-ups: the pipeline thread sleeps until the earliest thing that is *due* — a group commit of records in
the intake, the next health report, the next seal (`seal_at`: the very time `seal_due` then holds to), the end
of a "no subscribers" hold — or until something happens (a record, an uplink event, a flush) sets its wake
event. The old fixed 0.25 s poll was half of the agent's idle CPU. `MAX_SLEEP_S` keeps the watchdog's
liveness stamp fresh (the daemon wants a turn within 30 s).
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_SLEEP_S = 10.0
SEAL_FILL = 0.7  # seal early when the waiting records would fill this share of a batch


def seal_at(*, n_unsealed: int, body_bytes: int, max_batch: int, urgent: bool, waiting_since: float | None,
            now: float, linger_s: float) -> float | None:
    """When the next batch is due (monotonic seconds; `now` when it is due at once), or None when nothing waits.
    `urgent`: an event/episode record, a flush or a stop is waiting; `waiting_since`: monotonic time the oldest
    unsealed sample began waiting (None: unknown → due now). The pipeline sleeps until this time and seals once
    it has come (seal_due): one rule for both, so the wake-up and the decision cannot disagree."""
    if n_unsealed <= 0:
        return None
    if urgent or body_bytes >= max_batch * SEAL_FILL or waiting_since is None:
        return now
    return waiting_since + linger_s


def seal_due(at: float | None, now: float) -> bool:
    """Whether to seal a batch now, given its time from seal_at."""
    return at is not None and now >= at


def sleep_s(now: float, due: Iterable[float | None], cap_s: float = MAX_SLEEP_S) -> float:
    """Seconds until the earliest due time (None entries are "nothing scheduled"), within [0, cap_s]."""
    times = [t for t in due if t is not None]
    if not times:
        return cap_s
    return max(0.0, min(cap_s, min(times) - now))
