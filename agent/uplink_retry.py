"""What the uplink runs after a connect attempt failed or a session ended: why it failed (noted for status and
health, a TLS refusal diagnosed), whether to fall back to MQTT 3.1.1, and how long to wait before the next
attempt (the policy is in agent/uplink.py's opening).

No threads of its own: everything here runs on the uplink thread. Split from uplink.py because a connected,
healthy car never runs it; it is imported at the first failed attempt or the first session that ends (issue 13:
idle RSS, ~10 KiB of code objects a car that stays connected does not hold). uplink.py still names the
policy's functions and constants (`uplink.retry_delay_s`, `uplink.LOST`, ...) through agent/lazy.py.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import tls
from .config import UplinkConfig
from .errors import ConfigError
from .uplink import NO_CONNACK

if TYPE_CHECKING:
    from .uplink import Uplink

log = logging.getLogger("icvq.uplink")

UNSUPPORTED_PROTOCOL = 0x84
V3_UNACCEPTABLE_PROTOCOL = 0x01
LOST, UNREACHABLE, REFUSED = "lost", "unreachable", "refused"
GOOD_SESSION_S = 10.0


def next_protocol(current: str, configured: str, failure_code: int | None) -> str:
    """v5 first; fall back to 3.1.1 only when configured "auto" and the broker says it does not speak v5:
    CONNACK 0x84 (v5 Unsupported Protocol Version) or 0x01 (a 3.1.1 broker's "unacceptable protocol level").
    A broker that merely vanishes mid-handshake (a restart under load) is no reason: a fleet must not get
    stuck on 3.1.1, which has no PUBACK reason codes, after one bad minute."""
    if configured != "auto":
        return configured
    if current == "5" and failure_code in (UNSUPPORTED_PROTOCOL, V3_UNACCEPTABLE_PROTOCOL):
        return "3.1.1"
    return current


def backoff_s(attempt: int, lo: float, hi: float, rnd: Callable[[], float] = random.random) -> float:
    """Exponential back-off with full jitter: a fleet coming out of one tunnel must not reconnect in step."""
    cap = min(hi, lo * 2 ** min(attempt, 20))
    return lo + (cap - lo) * rnd()


def retry_delay_s(outcome: str, failures: int, cfg: UplinkConfig,
                  rnd: Callable[[], float] = random.random) -> float:
    """How long to wait before the next attempt (a nudge from agent/wayback.py cuts it short).
    LOST: a session that had lasted ended; UNREACHABLE: TCP did not connect; REFUSED: the broker answered and
    said no (or a fresh session died at once). See uplink.py's opening for why each."""
    if outcome == LOST:
        return cfg.reconnect_probe_s * rnd()
    if outcome == UNREACHABLE:
        return cfg.reconnect_probe_s * (0.5 + rnd())
    return backoff_s(failures, cfg.backoff_min_s, cfg.backoff_max_s, rnd)


def connect_failed(up: Uplink, e: ConfigError | ssl.SSLError | ValueError | OSError) -> int | None:
    """`client.connect` raised: NO_CONNACK when the broker is there (or the config is at fault), None when TCP
    did not connect (the `Uplink._one_connection` codes)."""
    cfg = up.cfg
    if isinstance(e, ConfigError):
        # A secret file others may read (agent/private.py): a local matter, back off as after a refusal.
        up._note_error(str(e), "config")
        return NO_CONNACK
    if isinstance(e, (ssl.SSLError, ValueError)):
        # TCP connected and TLS said no (or the settings are unusable): the broker is there, back off.
        why = tls.classify(str(e))
        up._note_error(f"connect to {cfg.host}:{cfg.port} failed: {why.text if why else e}",
                       why.code if why else "tls_failed")
        return NO_CONNACK
    up._note_error(f"connect to {cfg.host}:{cfg.port} failed: {e}", "unreachable")
    return None


def no_session(up: Uplink) -> int:
    """TCP (and TLS) connected but no session: stopped, the CONNACK said no (its code), or the broker closed."""
    if up._stop.is_set():
        return NO_CONNACK
    if up._connack:
        up._note_error(f"broker refused the connection: CONNACK reason {up._connack[0]:#x}", "connack_refused")
        return up._connack[0]
    why = diagnose(up)
    up._note_error(why.text if why else "broker closed the connection before CONNACK (client certificate, "
                   "credentials or protocol refused?)", why.code if why else "no_connack")
    return NO_CONNACK


def diagnose(up: Uplink) -> tls.Refusal | None:
    """Why the broker closed a TLS connection before CONNACK, asked with the context that connection used:
    the certificate it presented, not one installed since, and no second SSLContext and CA/key load."""
    if up._tls_ctx is None:
        return None
    cfg = up.cfg
    return tls.diagnose(cfg.host, cfg.port, up._tls_ctx, min(cfg.connect_timeout_s, 5.0))


def next_attempt(up: Uplink, code: int | None, started: float, failures: int) -> int:
    """After an attempt that began at `started` (monotonic) ended with `code`: switch protocol and go again at
    once, or wait as the outcome says (or until the way is back). Returns the refusals in a row."""
    lasted = time.monotonic() - started
    new = next_protocol(up.protocol, up.cfg.protocol, code)
    if new != up.protocol:
        log.warning("broker refused MQTT v5; falling back to MQTT 3.1.1")
        up.protocol = new
        return failures
    # A session that worked (it lasted, or the broker acknowledged something) ended: the broker went
    # away (restart, link). One that died at once after CONNACK is a refusal in disguise (a takeover
    # loop, a broker kicking us): back off.
    if code == 0 and (lasted >= GOOD_SESSION_S or (up.last_ack_mono or 0.0) > started):
        outcome = LOST
    elif code is None:
        outcome = UNREACHABLE
    else:
        outcome = REFUSED
    delay = retry_delay_s(outcome, failures, up.cfg)
    failures = 0 if outcome == LOST else failures + (outcome == REFUSED)
    # _hold ended a stalled connection on news that the way is back: that news is the reason, no wait.
    why = up._resume or up._wayback.wait(delay)
    up._resume = ""
    if why and not up._stop.is_set():
        log.info("uplink: %s; reconnecting now", why)
        up.last_way_back = why
        # Never faster than twice a second, whatever the kernel or the link probe report.
        up._stop.wait(max(0.0, started + 0.5 - time.monotonic()))
    return failures
