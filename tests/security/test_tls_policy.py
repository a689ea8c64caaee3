"""The transport policy and the refusal classifier, from tables (agent/tls.py; pure)."""

from __future__ import annotations

import calendar
import time
from pathlib import Path

import pytest

from agent import tls
from agent.config import TlsConfig, UplinkConfig


@pytest.mark.parametrize(("host", "loopback"), [
    ("localhost", True), ("LOCALHOST.", True), ("127.0.0.1", True), ("127.3.2.1", True), ("::1", True),
    ("[::1]", True), ("ip6-localhost", True),
    ("0.0.0.0", False), ("10.0.0.5", False), ("broker.example.com", False), ("localhost.example.com", False),
    ("::ffff:127.0.0.1", False), ("", False),
])
def test_loopback_is_decided_from_the_text_never_by_resolving(host: str, loopback: bool) -> None:
    assert tls.is_loopback(host) is loopback


@pytest.mark.parametrize(("uplink", "transport"), [
    (UplinkConfig(host="127.0.0.1"), tls.PLAINTEXT_LOOPBACK),
    (UplinkConfig(host="broker.example.com"), tls.PLAINTEXT_REFUSED),
    (UplinkConfig(host="broker.example.com", allow_plaintext=True), tls.PLAINTEXT_ALLOWED),
    (UplinkConfig(host="broker.example.com", tls=TlsConfig(ca="/ca.pem")), tls.TLS),
    (UplinkConfig(host="broker.example.com", tls=TlsConfig(cert="/c.pem", key="/k.pem")), tls.TLS),
    (UplinkConfig(host="localhost", tls=TlsConfig(ca="/ca.pem")), tls.TLS),
])
def test_transport(uplink: UplinkConfig, transport: str) -> None:
    assert tls.transport(uplink) == transport
    refusal = tls.plaintext_refusal(uplink)
    assert (refusal is not None) == (transport == tls.PLAINTEXT_REFUSED)
    if refusal is not None:
        assert refusal.key == "uplink.allow_plaintext" and "broker.example.com:1883" in str(refusal)


@pytest.mark.parametrize(("text", "code"), [
    ("[SSL: SSLV3_ALERT_CERTIFICATE_REVOKED] sslv3 alert certificate revoked (_ssl.c:2580)", "client_cert_revoked"),
    ("[SSL: SSLV3_ALERT_CERTIFICATE_EXPIRED] sslv3 alert certificate expired (_ssl.c:1006)", "client_cert_expired"),
    ("[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required", "client_cert_required"),
    ("[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca", "client_cert_unknown_ca"),
    ("[SSL: TLSV1_ALERT_DECRYPT_ERROR] tlsv1 alert decrypt error (_ssl.c:2580)", "client_cert_refused"),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate has expired (_ssl.c:1006)",
     "broker_cert_expired"),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: Hostname mismatch, certificate is not valid "
     "for 'x'", "broker_cert_name"),
    ("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate", "broker_cert_untrusted"),
    ("[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)", "not_tls"),
    ("[SSL: KEY_VALUES_MISMATCH] key values mismatch", "client_key_mismatch"),
    ("[Errno 111] Connection refused", None),
])
def test_classify(text: str, code: str | None) -> None:
    r = tls.classify(text)
    assert (r.code if r else None) == code
    if r:
        assert text.strip() in r.text


def test_client_context_floor_is_tls_1_2_and_verifies() -> None:
    import ssl

    ctx = tls.client_context(TlsConfig())
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert tls.client_context(TlsConfig(min_version="1.3")).minimum_version == ssl.TLSVersion.TLSv1_3


@pytest.mark.parametrize(("days", "args"), [(2, ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]),
                                           (30000, ["-newkey", "rsa:1024"])])  # 2108: GeneralizedTime
def test_cert_not_after_matches_openssl(tmp_path: Path, days: int, args: list[str]) -> None:
    import subprocess

    subprocess.run(["openssl", "req", "-x509", *args, "-nodes", "-keyout", str(tmp_path / "k"), "-out",
                    str(tmp_path / "c"), "-days", str(days), "-subj", "/CN=x"], check=True, capture_output=True)
    end = subprocess.run(["openssl", "x509", "-in", str(tmp_path / "c"), "-noout", "-enddate"], check=True,
                         capture_output=True, text=True).stdout.strip().split("=", 1)[1]
    want = calendar.timegm(time.strptime(end, "%b %d %H:%M:%S %Y GMT"))
    assert tls.cert_not_after((tmp_path / "c").read_text()) == want
    assert tls.client_cert_not_after(TlsConfig(cert=str(tmp_path / "c"), key=str(tmp_path / "k"))) == want


@pytest.mark.parametrize("text", ["", "no certificate here", "-----BEGIN CERTIFICATE-----\nAAAA\n"
                                  "-----END CERTIFICATE-----\n", "-----BEGIN CERTIFICATE-----\nMIIBAQ==\n"
                                  "-----END CERTIFICATE-----\n"])
def test_cert_not_after_of_garbage_is_none(text: str) -> None:
    assert tls.cert_not_after(text) is None
