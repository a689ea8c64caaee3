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

No threads of its own; `diagnose()` runs on the uplink thread and is bounded by its timeout.
"""

from __future__ import annotations

import calendar
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass

from .config import AgentConfig, TlsConfig, UplinkConfig
from .errors import ConfigError
from .private import check_secret, check_secrets

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

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


def client_context(tls: TlsConfig) -> ssl.SSLContext:
    """Verifying client context: CA bundle (or the system's), host name check, TLS ≥ min_version, client cert."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls.ca or None)
    ctx.minimum_version = MIN_VERSIONS[tls.min_version]
    if tls.cert:
        check_secret(tls.key, "uplink.tls.key")
        ctx.load_cert_chain(tls.cert, tls.key)
    return ctx


# ------------------------------------------------------------------------------------ certificate expiry
def _tlv(der: bytes, i: int) -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the DER element at i."""
    tag, n = der[i], der[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(der[i:i + k], "big")
        i += k
    if i + n > len(der):
        raise ValueError("truncated DER")
    return tag, i, i + n


def _asn1_time(tag: int, raw: bytes) -> float:
    text = raw.decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ: years 50-99 are 19xx (RFC 5280)
        text = ("19" if int(text[:2]) >= 50 else "20") + text
    return calendar.timegm(time.strptime(text[:14], "%Y%m%d%H%M%S"))


def cert_not_after(pem: str) -> float | None:
    """notAfter (Unix seconds) of the first certificate in a PEM text; None when there is none or it does not
    parse. Hand-written (~25 lines of DER walking) because the ssl module reads no certificate of our own and
    the `cryptography` package is no agent dependency: Certificate → tbsCertificate → [version], serial,
    signature, issuer, validity → notAfter."""
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    if begin not in pem or end not in pem:
        return None
    block = pem[pem.index(begin):pem.index(end) + len(end)]
    try:
        der = ssl.PEM_cert_to_DER_cert(block)
        _, tbs, _ = _tlv(der, 0)
        _, i, _ = _tlv(der, tbs)
        tag, _, j = _tlv(der, i)
        if tag == 0xA0:  # explicit version
            i = j
        for _ in range(3):  # serial, signature algorithm, issuer
            i = _tlv(der, i)[2]
        tag, v, _ = _tlv(der, i)
        if tag != 0x30:
            return None
        nb_end = _tlv(der, v)[2]
        tag, a, b = _tlv(der, nb_end)
        return _asn1_time(tag, der[a:b])
    except (ValueError, IndexError, UnicodeDecodeError):
        return None


def client_cert_not_after(tls: TlsConfig) -> float | None:
    if not tls.cert:
        return None
    try:
        with open(tls.cert, encoding="ascii", errors="replace") as f:
            return cert_not_after(f.read(65536))
    except OSError:
        return None


# --------------------------------------------------------------------------------------------- refusals
@dataclass(frozen=True)
class Refusal:
    """Why a connection attempt failed: a stable `code` for status and health, `text` for people."""

    code: str
    text: str


# (substring of the OpenSSL/paho error text, upper-cased) → (code, explanation). First match wins.
_RULES: tuple[tuple[str, str, str], ...] = (
    ("CERTIFICATE_REVOKED", "client_cert_revoked", "the broker refused our client certificate: it is revoked "
                                                   "(on the broker's CRL); install a new one (docs/security.md)"),
    ("ALERT_CERTIFICATE_EXPIRED", "client_cert_expired", "the broker refused our client certificate: it has "
                                                         "expired; install a renewed one (docs/security.md)"),
    ("CERTIFICATE_REQUIRED", "client_cert_required", "the broker requires a client certificate: set "
                                                     "uplink.tls.cert and uplink.tls.key"),
    ("ALERT_UNKNOWN_CA", "client_cert_unknown_ca", "the broker does not trust the CA that issued our client "
                                                   "certificate"),
    ("ALERT_BAD_CERTIFICATE", "client_cert_refused", "the broker refused our client certificate"),
    # What OpenSSL answers for a certificate whose issuer has the name of a CA the broker trusts but not its key
    # (a re-minted CA, a test CA): the issuer's signature does not verify.
    ("ALERT_DECRYPT_ERROR", "client_cert_refused", "the broker could not verify our client certificate's "
                                                   "signature (issued by another CA of the same name?)"),
    ("ALERT_UNSUPPORTED_CERTIFICATE", "client_cert_refused", "the broker refused our client certificate"),
    ("ALERT_CERTIFICATE_UNKNOWN", "client_cert_refused", "the broker refused our client certificate"),
    ("ALERT_HANDSHAKE_FAILURE", "client_cert_refused", "the broker ended the TLS handshake (client certificate "
                                                       "missing or refused, or no common cipher)"),
    ("CERTIFICATE HAS EXPIRED", "broker_cert_expired", "the broker's certificate has expired"),
    ("HOSTNAME MISMATCH", "broker_cert_name", "the broker's certificate is not valid for uplink.host"),
    ("IP ADDRESS MISMATCH", "broker_cert_name", "the broker's certificate is not valid for uplink.host"),
    ("CERTIFICATE_VERIFY_FAILED", "broker_cert_untrusted", "the broker's certificate is not trusted "
                                                           "(uplink.tls.ca)"),
    ("WRONG_VERSION_NUMBER", "not_tls", "the broker port does not speak TLS (plain MQTT port?)"),
    ("UNSUPPORTED_PROTOCOL", "tls_version", "the broker offers no TLS version ≥ uplink.tls.min_version"),
    ("PROTOCOL_VERSION", "tls_version", "the broker offers no TLS version ≥ uplink.tls.min_version"),
    ("KEY VALUES MISMATCH", "client_key_mismatch", "uplink.tls.key does not belong to uplink.tls.cert"),
)


def classify(text: str) -> Refusal | None:
    """A TLS failure's error text → Refusal, or None when it is no TLS matter."""
    up = text.upper()
    for needle, code, why in _RULES:
        if needle in up:
            return Refusal(code, f"{why} ({text.strip()})")
    return None


def diagnose(host: str, port: int, ctx: ssl.SSLContext, timeout_s: float) -> Refusal | None:
    """Dial once, finish the handshake, send nothing and read: a broker that refuses our certificate after a
    TLS 1.3 handshake says why in an alert, which arrives here. None when the broker stays silent (it accepted
    the certificate and waits for CONNECT: the refusal was about something else) or the diagnosis itself
    failed in a way that says nothing new."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as s:
            s.recv(1)
    except ssl.SSLError as e:
        return classify(str(e))
    except OSError:
        return None
    return None
