"""The TLS half of agent/tls.py: the client context, the client certificate's expiry, and refusals explained.

Imported on first use through agent.tls's names (`tls.client_context`, `tls.classify`, ...): an uplink without
TLS never needs it (issue 13: idle RSS). agent/tls.py's docstring says what each part decides and why. No
threads; `diagnose()` runs on the uplink thread and is bounded by its timeout.
"""

from __future__ import annotations

import calendar
import socket
import ssl
import time

from .config import TlsConfig
from .dataclass_shared import dataclass
from .private import check_secret

MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


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
