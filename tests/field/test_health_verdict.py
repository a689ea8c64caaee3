"""The health verdict from a table of facts: each row one situation a field engineer meets, the verdict and
the reason codes (worst first) the agent must give for it."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from agent.health import (
    ACK_STALL_S,
    CLOCK_UNSYNCED_GRACE_S,
    PIPELINE_STALL_S,
    Facts,
    Onsets,
    ProbeFact,
    SpoolFact,
    verdict,
)

NOW = 1_767_225_600.0
OK = Facts(now=NOW, connected=True, connected_since=NOW - 600, offline_since=None, broker="b:1883",
           last_ack_wall=NOW - 2, spool_max_bytes=64 << 20, probes=(ProbeFact("system", "ok"),))

ROWS: list[tuple[str, dict[str, Any], str, list[str]]] = [
    ("all well", {}, "healthy", []),
    ("broker down", {"connected": False, "connected_since": None, "offline_since": NOW - 90,
                     "uplink_error": "connect to b:1883 failed: [Errno 111] Connection refused"},
     "degraded", ["offline"]),
    ("never connected yet", {"connected": False, "connected_since": None, "offline_since": NOW - 1},
     "degraded", ["offline"]),
    ("no backend subscribed (0x10)", {"no_subscribers_since": NOW - 300, "held_batches": 3}, "degraded",
     ["no_subscriber"]),
    ("offline wins over an old 0x10 run", {"connected": False, "no_subscribers_since": NOW - 300},
     "degraded", ["offline"]),
    ("broker ACL refuses our batches (0x87): each dropped after 5 tries", {"refused_code": 0x87,
     "refused_since": NOW - 20, "drops": {"rejected.0x87": 40}}, "failing", ["batches_refused", "dropped"]),
    ("refusals while offline: offline says it", {"connected": False, "refused_code": 0x87}, "degraded",
     ["offline"]),
    ("quota refusal (0x97)", {"refused_code": 0x97, "refused_since": NOW - 5}, "failing", ["batches_refused"]),
    ("acks stalled", {"inflight": 4, "last_ack_wall": NOW - ACK_STALL_S - 1}, "degraded", ["acks_stalled"]),
    ("never acked since connect", {"inflight": 4, "last_ack_wall": None, "connected_since": NOW - 500},
     "degraded", ["acks_stalled"]),
    ("acks slow but not stalled", {"inflight": 4, "last_ack_wall": NOW - 5}, "healthy", []),
    ("spool read-only", {"spool_trouble": SpoolFact("read_only", NOW - 60, "attempt to write a readonly "
                                                    "database"), "memory_records": 120}, "failing",
     ["spool_read_only"]),
    ("spool disk full", {"spool_trouble": SpoolFact("disk_full", NOW - 60, "database or disk is full")},
     "failing", ["spool_disk_full"]),
    ("spool unopenable", {"spool_trouble": SpoolFact("unopenable", NOW - 5, "is a directory")}, "failing",
     ["spool_unopenable"]),
    ("spool low headroom", {"spool_trouble": SpoolFact("low_headroom", NOW - 5, "12 MiB free")}, "degraded",
     ["spool_low_headroom"]),
    ("spool 85 % of max_mib", {"spool_bytes": int(0.85 * (64 << 20))}, "degraded", ["spool_filling"]),
    ("probe retrying", {"probes": (ProbeFact("can", "degraded", "OSError: no such device", NOW - 3),)},
     "degraded", ["probe_degraded"]),
    ("probe gave up", {"probes": (ProbeFact("can", "error", "OSError: no such device", NOW - 30),
                                  ProbeFact("system", "ok"))}, "failing", ["probe_failing"]),
    ("probe starting", {"probes": (ProbeFact("display", "starting"),)}, "healthy", []),
    ("pipeline stalled", {"pipeline_age_s": PIPELINE_STALL_S + 1}, "failing", ["pipeline_stalled"]),
    ("clock unsynced, just started", {"clock_synced": False, "clock_unsynced_since": NOW - 30}, "healthy",
     ["clock_unsynced"]),
    ("clock unsynced for long", {"clock_synced": False, "clock_unsynced_since": NOW - CLOCK_UNSYNCED_GRACE_S},
     "degraded", ["clock_unsynced"]),
    ("history unwritable", {"history_error": "disk I/O error"}, "degraded", ["history_unwritable"]),
    ("old drops are a note", {"drops": {"spool_full.metric": 12}}, "healthy", ["dropped"]),
    ("plaintext off loopback refused", {"connected": False, "offline_since": NOW - 60, "transport":
                                        "plaintext-refused", "connect_error_code": "plaintext_refused",
                                        "uplink_error": "not connecting: uplink.allow_plaintext: ..."},
     "failing", ["plaintext_refused"]),
    ("client certificate revoked", {"connected": False, "connect_error_code": "client_cert_revoked",
                                    "connect_error_since": NOW - 600}, "failing", ["certificate_refused"]),
    ("client certificate expired", {"connected": False, "connect_error_code": "client_cert_expired"}, "failing",
     ["certificate_refused"]),
    ("password file others may read", {"connected": False, "connect_error_code": "config"}, "failing",
     ["uplink_config"]),
    ("broker unreachable is only offline", {"connected": False, "connect_error_code": "unreachable"},
     "degraded", ["offline"]),
    ("plaintext allowed is a note", {"transport": "plaintext-allowed"}, "healthy", ["plaintext_allowed"]),
    ("client certificate far from its end", {"client_cert_not_after": NOW + 400 * 86400}, "healthy", []),
    ("client certificate expires in 10 days", {"client_cert_not_after": NOW + 10 * 86400}, "degraded",
     ["client_cert_expiring"]),
    ("expired client certificate the broker still takes", {"client_cert_not_after": NOW - 60}, "degraded",
     ["client_cert_expiring"]),
    ("expired and refused: one reason", {"connected": False, "client_cert_not_after": NOW - 60,
                                         "connect_error_code": "client_cert_expired"}, "failing",
     ["certificate_refused"]),
    ("campaigns are a note", {"campaigns": ("radar-w49",)}, "healthy", ["campaigns_active"]),
    ("worst first", {"connected": False, "offline_since": NOW - 9, "drops": {"invalid": 1},
                     "probes": (ProbeFact("can", "error", "x", NOW),),
                     "spool_trouble": SpoolFact("low_headroom", NOW, "1 MiB free")}, "failing",
     ["probe_failing", "spool_low_headroom", "offline", "dropped"]),
]


@pytest.mark.parametrize(("what", "facts", "state", "codes"), ROWS, ids=[r[0] for r in ROWS])
def test_verdict_table(what: str, facts: dict[str, Any], state: str, codes: list[str]) -> None:
    v = verdict(replace(OK, **facts))
    assert v.state == state, v
    # Failing before degraded before notes: the first reason is the one to read.
    assert [r.code for r in v.reasons] == codes, v.reasons


def test_reasons_carry_since_and_the_line_names_them() -> None:
    v = verdict(replace(OK, no_subscribers_since=NOW - 130, held_batches=3))
    (r,) = v.reasons
    assert r.since == NOW - 130 and "0x10" in r.text and "3 batches held" in r.text
    assert v.line() == f"degraded: {r.text} for 2m10s"
    assert v.as_dict()["reasons"][0] == {"code": "no_subscriber", "severity": "degraded", "text": r.text,
                                         "since": NOW - 130}
    assert verdict(OK).line() == "healthy"
    assert verdict(replace(OK, drops={"invalid": 2})).line() == "healthy"  # notes never make a line


def test_onsets_remember_when_a_condition_began() -> None:
    on = Onsets()
    assert on("clock", True, 100.0) == 100.0
    assert on("clock", True, 160.0) == 100.0
    assert on("clock", False, 170.0) is None
    assert on("clock", True, 180.0) == 180.0
