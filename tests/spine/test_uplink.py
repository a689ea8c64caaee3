"""Uplink decisions from tables, the broker's packet limit honoured for real, and a connection thread that survives."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from agentproc import AgentProc, base_config, write_config
from broker import Mosquitto, free_port
from paho.mqtt.enums import CallbackAPIVersion
from recorder import Recorder

from agent.config import from_mapping
from agent.uplink import NO_CONNACK, UNSUPPORTED_PROTOCOL, Uplink, _Client, backoff_s, next_protocol


@pytest.mark.parametrize(("current", "configured", "code", "expected"), [
    ("5", "auto", UNSUPPORTED_PROTOCOL, "3.1.1"),
    ("5", "auto", 0x01, "3.1.1"),            # a 3.1.1 broker's "unacceptable protocol level"
    ("5", "auto", NO_CONNACK, "5"),          # a silent close could be anything
    ("5", "auto", NO_CONNACK, "5"),          # even many: a restarting broker under fleet load
    ("5", "auto", None, "5"),                # TCP refused says nothing about the protocol
    ("5", "auto", 0x87, "5"),                # not authorised: v5 understood
    ("5", "5", UNSUPPORTED_PROTOCOL, "5"),   # pinned by config
    ("3.1.1", "auto", None, "3.1.1"),
])
def test_protocol_fallback(current: str, configured: str, code: int | None, expected: str) -> None:
    assert next_protocol(current, configured, code) == expected


def test_backoff_is_jittered_and_bounded() -> None:
    assert backoff_s(0, 1, 120, lambda: 0.0) == 1
    assert backoff_s(3, 1, 120, lambda: 1.0) == 8
    assert backoff_s(30, 1, 120, lambda: 1.0) == 120
    assert all(1 <= backoff_s(a, 1, 120) <= 120 for a in range(40))


def test_broker_maximum_packet_size_is_honoured(tmp_path: Path) -> None:
    port = free_port()
    b = Mosquitto(tmp_path / "broker", port=port,
                  extra_conf=f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_packet_size 1500\n").start()
    try:
        rec = Recorder(port).start()
        cfg = base_config(tmp_path, port, **{"probes__system": {"interval_s": 0.1}})
        cfg["uplink"]["batch_linger_s"] = 3.0  # let a batch grow well past the broker's limit
        agent = AgentProc(write_config(tmp_path, cfg), tmp_path / "agent.log").start()
        try:
            rec.wait(lambda r: len(r.batches()) >= 3, 30)
        finally:
            assert agent.stop() == 0
        time.sleep(0.5)
        rec.stop()
        with rec.lock:
            sizes = [len(p) for t, p in rec.messages if t.endswith("/batch")]
        assert max(sizes) <= 1500 - 100
        seqs = sorted(x.id.seq for x in rec.unique().values())
        assert seqs == list(range(1, len(seqs) + 1))
    finally:
        b.kill()


def test_no_matching_subscribers_keeps_batches_until_the_backend_listens(tmp_path: Path, broker: Mosquitto) -> None:
    """mosquitto answers PUBACK 0x10 when nobody subscribes (e.g. ingest workers not back after a broker
    restart): the broker drops the message, so the agent must keep the batch and send it again."""
    agent = AgentProc(write_config(tmp_path, base_config(tmp_path, broker.port)), tmp_path / "agent.log").start()
    try:
        agent.wait_log("no subscriber for our batches", 20)
        time.sleep(2)
        rec = Recorder(broker.port).start()
        rec.wait(lambda r: len(r.batches()) >= 3, 90)
    finally:
        assert agent.stop() == 0
    time.sleep(0.5)
    rec.stop()
    seqs = sorted(b.id.seq for b in rec.unique().values())
    assert seqs[0] == 1 and seqs == list(range(1, len(seqs) + 1)), seqs


def test_loop_stop_survives_the_loop_ending_by_itself_in_between() -> None:
    """paho's loop_stop read `_thread` twice; the loop thread, ending on its own, set it to None in between and
    the AttributeError ended the agent's connection thread (seen once in CI under load)."""
    client = _Client(CallbackAPIVersion.VERSION2, client_id="t")

    class Ending(threading.Thread):
        def __ne__(self, other: object) -> bool:     # paho compares the current thread with it, then joins
            client._thread = None
            return True

    t = Ending(target=lambda: None)
    t.start()
    client._thread = t
    client.loop_stop()
    assert not t.is_alive()


def test_an_unexpected_error_in_the_connection_loop_does_not_end_the_uplink(
        tmp_path: Path, broker: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = from_mapping({"vehicle": {"id": "VST01", "device": "hu", "fleet": "t"},
                        "uplink": {"host": "127.0.0.1", "port": broker.port, "backoff_min_s": 0.1,
                                   "backoff_max_s": 1.0, "reconnect_probe_s": 0.5},
                        "spool": {"path": str(tmp_path / "spool.db")}})
    calls = []
    real = Uplink._one_connection

    def once_broken(self: Uplink) -> int | None:
        calls.append(1)
        if len(calls) == 1:
            raise AttributeError("'NoneType' object has no attribute 'join'")
        return real(self)

    monkeypatch.setattr(Uplink, "_one_connection", once_broken)
    up = Uplink(cfg.uplink, cfg.vehicle, boot_id="b", birth_fields=dict, wall_ms=lambda: int(time.time() * 1000))
    up.start()
    try:
        deadline = time.monotonic() + 30
        while up.connected_since is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert up.connected_since is not None, up.last_error
        assert len(calls) >= 2
    finally:
        up.stop()
