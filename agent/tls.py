"""Transport security of the uplink: the plaintext policy, the TLS context, and why a broker refused us.

Owns three decisions, all pure or nearly so, so that agent/uplink.py only calls in:
- **Plaintext policy.** MQTT without TLS is allowed to a loopback broker (a local bridge, the tests) and
  otherwise only with `uplink.allow_plaintext = true`. Loopback is decided from the configured host's text
  (an IP literal in 127.0.0.0/8 or ::1, or the name "localhost"), never by resolving it: a DNS answer that
  says 127.0.0.1 once and a remote address the next time must not open a plaintext path.
  A refused config is *not* an exit: the daemon keeps its probes, spool and history running and the uplink
  thread stops before dialling (state `plaintext_refused` in `icvq status` and the journal). Exiting 78 would
  stop collection on a car that nobody can reach; with the uplink held, a corrected drop-in plus SIGHUP delivers
  everything recorded meanwhile. `--check-config` still fails (78, naming `uplink.allow_plaintext`), so
  provisioning pipelines and image builds catch it before a car ever does.
- **TLS context.** Python's default client context (certificate and host name verification, system CAs when
  `uplink.tls.ca` is empty) with a floor of TLS 1.2 (`uplink.tls.min_version`), and the client certificate
  when configured. Rebuilt per connection, so a rotated certificate or CA bundle is used at the next connect
  (docs/security.md, "Key rotation"); the diagnosis of a refused connection dials with that connection's context.
- **Refusals explained.** Under TLS 1.3 a broker checks the client certificate after the client's handshake
  has finished; it then closes, and the client, already writing CONNECT, sees only "EOF" (the alert is lost in
  the TCP reset). `diagnose()` dials once more, completes the handshake and only *reads*, which delivers the
  alert ("certificate revoked", "certificate expired"): ~4 ms against a local mosquitto, and only on a
  connection that failed before CONNACK. `classify()` turns any error text into a stable code for status,
  health and the log.

No threads of its own; `diagnose()` runs on the uplink thread and is bounded by its timeout. The TLS context,
certificate expiry and refusals live in agent/tls_context.py, reached through this module's names on first use:
an uplink without TLS (a loopback bridge, the default config) never imports them (issue 13: idle RSS).
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from . import lazy
from .config import AgentConfig, TlsConfig, UplinkConfig
from .errors import ConfigError
from .private import check_secrets

if TYPE_CHECKING:
    from .tls_context import MIN_VERSIONS as MIN_VERSIONS
    from .tls_context import Refusal as Refusal
    from .tls_context import cert_not_after as cert_not_after
    from .tls_context import classify as classify
    from .tls_context import client_context as client_context
    from .tls_context import diagnose as diagnose

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})

TLS = "tls"
PLAINTEXT_LOOPBACK = "plaintext-loopback"
PLAINTEXT_ALLOWED = "plaintext-allowed"
PLAINTEXT_REFUSED = "plaintext-refused"


def is_loopback(host: str) -> bool:
    h = host.strip().lower().rstrip(".")
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if h in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def tls_enabled(cfg: UplinkConfig) -> bool:
    return bool(cfg.tls.ca or cfg.tls.cert)


def transport(cfg: UplinkConfig) -> str:
    """What the uplink's connections are: tls, plaintext-loopback, plaintext-allowed or plaintext-refused."""
    if tls_enabled(cfg):
        return TLS
    if is_loopback(cfg.host):
        return PLAINTEXT_LOOPBACK
    return PLAINTEXT_ALLOWED if cfg.allow_plaintext else PLAINTEXT_REFUSED


def plaintext_refusal(cfg: UplinkConfig) -> ConfigError | None:
    """The error naming the key when the config would send plaintext off the machine; None when it may run."""
    if transport(cfg) != PLAINTEXT_REFUSED:
        return None
    return ConfigError(f"plaintext MQTT to {cfg.host}:{cfg.port} (not loopback) is refused: configure TLS "
                       "(uplink.tls.ca, and uplink.tls.cert/key for client certificate authentication) or, "
                       "knowing the data crosses the network readable by anyone on the path, set "
                       "uplink.allow_plaintext = true", key="uplink.allow_plaintext")


def check(cfg: AgentConfig) -> None:
    """`--check-config`'s extra: what would hold the uplink (plaintext off loopback, secrets others may read)
    fails the check with exit 78, naming the key, although the daemon itself keeps running with it."""
    try:
        refusal = plaintext_refusal(cfg.uplink)
        if refusal is not None:
            raise refusal
        check_secrets(cfg.uplink.password_file, cfg.uplink.tls.key)
    except ConfigError as e:
        raise ConfigError(e.message, key=e.key, source=", ".join(cfg.sources)) from None


def client_cert_not_after(tls: TlsConfig) -> float | None:
    if not tls.cert:
        return None
    try:
        with open(tls.cert, encoding="ascii", errors="replace") as f:
            pem = f.read(65536)
    except OSError:
        return None
    from .tls_context import cert_not_after

    return cert_not_after(pem)


_CONTEXT = frozenset({"MIN_VERSIONS", "client_context", "cert_not_after", "Refusal", "classify", "diagnose"})


# `tls.client_context` and the other TLS-only names, from agent/tls_context.py on first use (PEP 562).
__getattr__ = lazy.forward(__name__, "tls_context", _CONTEXT)
