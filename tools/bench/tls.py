"""Benchmark: what TLS with client certificates costs the uplink per connection (issue 14).

A real mosquitto with a plaintext loopback listener and an mTLS listener (require_certificate, CRL, ACL, as
docs/security.md documents), certificates from tools/pki (EC P-256). For each transport, N connections with
the agent's own paho settings and TLS context (agent/tls.py): time from connect() to CONNACK, and the bytes
both ways through a counting TCP relay (connect, CONNACK, DISCONNECT: what a reconnect after a tunnel costs
on the cellular data plan before any telemetry moves). Then the cost of `tls.diagnose()` (the second dial
that names a refused certificate) and of minting a vehicle certificate.

The relay is a thread pair per connection, hand-written because counting is all it does (~20 lines).
"""

from __future__ import annotations

import argparse
import socket
import ssl
import statistics
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent import tls
from agent.config import TlsConfig
from tools.localbroker import Mosquitto, free_port
from tools.pki import Pki


class Relay:
    """127.0.0.1:port → target, counting bytes each way for every connection."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.up = self.down = 0
        self.lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target))
            for x in (c, b):  # a relay must not add Nagle delays of its own
                x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._pipe, args=(c, b, "up"), daemon=True).start()
            threading.Thread(target=self._pipe, args=(b, c, "down"), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, way: str) -> None:
        try:
            while data := src.recv(65536):
                with self.lock:
                    setattr(self, way, getattr(self, way) + len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def take(self) -> tuple[int, int]:
        time.sleep(0.05)  # let the relay threads forward the last segments
        with self.lock:
            got, self.up, self.down = (self.up, self.down), 0, 0
        return got


def connect_once(port: int, ctx: ssl.SSLContext | None) -> float:
    done = threading.Event()
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-VIN-A", protocol=MQTTProtocolVersion.MQTTv5)
    if ctx is not None:
        c.tls_set_context(ctx)
    c.on_connect = lambda *_: done.set()
    t0 = time.perf_counter()
    c.connect("localhost", port)
    c.loop_start()
    if not done.wait(10):
        raise RuntimeError("no CONNACK")
    dt = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.tls", description=__doc__)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--quick", action="store_true", help="10 connections each")
    args = ap.parse_args(argv)
    n = 10 if args.quick else args.n
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        t0 = time.perf_counter()
        pki = Pki(tmp / "pki").init()
        t_ca = time.perf_counter() - t0
        server = pki.server("broker")
        t0 = time.perf_counter()
        pki.client("VIN-A")
        t_client = time.perf_counter() - t0
        pki.client("VIN-R")
        pki.revoke("VIN-R")
        (tmp / "acl").write_text("pattern write icvq/v1/+/%u/+/batch\n")
        plain, mtls, slow = free_port(), free_port(), free_port()
        listener = (f"cafile {pki.ca_cert}\ncertfile {server.cert}\nkeyfile {server.key}\ncrlfile {pki.crl}\n"
                    "require_certificate true\nuse_identity_as_username true\ntls_version tlsv1.2\n")
        conf = (f"per_listener_settings false\nset_tcp_nodelay true\nlistener {plain} 127.0.0.1\n"
                f"allow_anonymous true\nlistener {mtls} 127.0.0.1\n{listener}acl_file {tmp / 'acl'}\n")
        broker = Mosquitto(tmp / "broker", port=plain, extra_conf=conf, persistent=False).start()
        # The same listener on a broker left at mosquitto's default (Nagle on): see the note printed below.
        nagle = Mosquitto(tmp / "nagle", port=slow, extra_conf=f"listener {slow} 127.0.0.1\n{listener}",
                          persistent=False).start()
        try:
            def ctx(name: str, max13: bool = True) -> ssl.SSLContext:
                c = tls.client_context(TlsConfig(ca=str(pki.ca_cert), cert=str(pki.dir / f"{name}.crt"),
                                                 key=str(pki.dir / f"{name}.key")))
                if not max13:
                    c.maximum_version = ssl.TLSVersion.TLSv1_2
                return c

            rows = []
            for label, port, make in (("plaintext (loopback)", plain, lambda: None),
                                      ("TLS 1.3, client certificate", mtls, lambda: ctx("VIN-A")),
                                      ("TLS 1.2, client certificate", mtls, lambda: ctx("VIN-A", False)),
                                      ("TLS 1.3, client certificate, broker without set_tcp_nodelay", slow,
                                       lambda: ctx("VIN-A"))):
                relay = Relay(port)
                times, sizes = [], []
                for _ in range(n):
                    times.append(connect_once(relay.port, make()))
                    sizes.append(relay.take())
                relay.sock.close()
                up = statistics.median(s[0] for s in sizes)
                down = statistics.median(s[1] for s in sizes)
                rows.append((label, statistics.median(times) * 1000, max(times) * 1000, up, down))
            diag = []
            for _ in range(n):
                t0 = time.perf_counter()
                why = tls.diagnose("localhost", mtls, ctx("VIN-R"), 5.0)
                diag.append(time.perf_counter() - t0)
                assert why is not None and why.code == "client_cert_revoked", why
        finally:
            broker.kill()
            nagle.kill()
    print("## Issue 14 (transport security): cost of TLS with client certificates per connection\n")
    print(f"`python -m tools.bench.tls` ({n} connections each, mosquitto 2.0 on loopback with `set_tcp_nodelay "
          "true` as docs/security.md configures it, EC P-256 certificates from tools/pki; bytes counted by a TCP "
          "relay: connect, CONNACK, DISCONNECT, no telemetry).\n")
    print("| transport | connect → CONNACK, median | max | bytes sent | bytes received |")
    print("|---|---|---|---|---|")
    for label, med, mx, up, down in rows:
        print(f"| {label} | {med:.1f} ms | {mx:.1f} ms | {up:.0f} | {down:.0f} |")
    print(f"\n`tls.diagnose()` naming a revoked certificate (the second dial after a refusal): median "
          f"{statistics.median(diag) * 1000:.1f} ms. Minting with tools/pki: CA {t_ca * 1000:.0f} ms, one vehicle "
          f"certificate {t_client * 1000:.0f} ms.")
    print("Without `set_tcp_nodelay` a TLS 1.3 connect waits ~40 ms more: the broker's small post-handshake writes "
          "(session tickets, then CONNACK) sit in Nagle's buffer until the client's delayed ACK.")
    print("Every reconnect is a full handshake (paho keeps no TLS session), so the handshake bytes above are what "
          "each tunnel exit costs; per published batch TLS adds ~22 B (TLS 1.3 record header and AES-GCM tag).\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
