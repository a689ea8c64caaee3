"""The broker options of the backend's MQTT clients (ingest workers, campaign publisher): `--host/--port/
--topic-prefix` (`add_broker_arguments`) and `--tls-ca/--tls-cert/--tls-key` (`add_arguments`), with the
agent's own verifying context (agent/tls.py: TLS >= 1.2, host name checked, private key must be 0600), so the
backend meets the broker setup of docs/security.md with a client certificate of its own. No threads."""

from __future__ import annotations

import argparse
import ssl

from agent import tls
from agent.config import TlsConfig


def add_broker_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--host", default="127.0.0.1", help="broker host (default %(default)s)")
    ap.add_argument("--port", type=int, default=1883, help="broker port (default %(default)s)")
    ap.add_argument("--topic-prefix", default="icvq/v1", help="topic prefix (default %(default)s)")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--tls-ca", metavar="PEM", help="CA bundle of the broker's certificate: connect with TLS")
    ap.add_argument("--tls-cert", metavar="PEM", help="our client certificate (with --tls-key)")
    ap.add_argument("--tls-key", metavar="PEM", help="its private key (mode 0600)")


def context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not (args.tls_ca or args.tls_cert):
        return None
    return tls.client_context(TlsConfig(ca=args.tls_ca or "", cert=args.tls_cert or "", key=args.tls_key or ""))
