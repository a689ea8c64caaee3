"""TLS with client certificates against a real mosquitto (`require_certificate true`), and config errors."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from agentproc import REPO, AgentProc, base_config, to_toml, write_config
from broker import Mosquitto, free_port
from recorder import Recorder

from agent import tls
from agent.config import TlsConfig, UplinkConfig, VehicleConfig
from agent.uplink import NO_CONNACK, Uplink


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path, ca: str = "icvq test CA") -> None:
    d.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", f"/CN={ca}", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn in (("server", "localhost"), ("client", "VIN0001-hu")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={cn}", cwd=d)
        extra = ["-extfile", "san.ext"] if name == "server" else []
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "2", *extra, cwd=d)


@pytest.fixture
def tls_broker(tmp_path: Path):
    pki = tmp_path / "pki"
    make_pki(pki)
    port, plain = free_port(), free_port()
    conf = (f"listener {port} 127.0.0.1\ncafile {pki}/ca.crt\ncertfile {pki}/server.crt\nkeyfile {pki}/server.key\n"
            "require_certificate true\nuse_identity_as_username true\n"
            f"listener {plain} 127.0.0.1\nallow_anonymous true\n")
    b = Mosquitto(tmp_path / "broker", port=plain, extra_conf=conf).start()
    b.tls_port = port  # type: ignore[attr-defined]
    b.pki = pki  # type: ignore[attr-defined]
    yield b
    b.kill()


def test_tls_client_certificate_delivers(tmp_path: Path, tls_broker: Mosquitto) -> None:
    rec = Recorder(tls_broker.port).start()  # listens on the plain listener of the same broker
    pki = tls_broker.pki  # type: ignore[attr-defined]
    cfg = base_config(tmp_path, tls_broker.tls_port)  # type: ignore[attr-defined]
    cfg["uplink"]["host"] = "localhost"
    cfg["uplink.tls"] = {"ca": str(pki / "ca.crt"), "cert": str(pki / "client.crt"), "key": str(pki / "client.key")}
    agent = AgentProc(write_config(tmp_path, cfg), tmp_path / "agent.log").start()
    try:
        rec.wait(lambda r: len(r.batches()) >= 1)
    finally:
        assert agent.stop() == 0
        rec.stop()
    assert rec.batches()[0].id.vehicle == "VIN0001"


def test_tls_without_client_certificate_is_refused_and_agent_keeps_running(tmp_path: Path,
                                                                         tls_broker: Mosquitto) -> None:
    pki = tls_broker.pki  # type: ignore[attr-defined]
    cfg = base_config(tmp_path, tls_broker.tls_port)  # type: ignore[attr-defined]
    cfg["uplink"]["host"] = "localhost"
    cfg["uplink.tls"] = {"ca": str(pki / "ca.crt")}
    agent = AgentProc(write_config(tmp_path, cfg), tmp_path / "agent.log").start()
    try:
        agent.wait_log("uplink:", 15)
        time.sleep(1)
        assert agent.proc is not None and agent.proc.poll() is None
    finally:
        assert agent.stop() == 0


def test_a_refusal_is_diagnosed_with_that_connections_context_and_a_renewed_certificate_is_read(
        tmp_path: Path, tls_broker: Mosquitto, monkeypatch: pytest.MonkeyPatch) -> None:
    """One TLS context per connection attempt: the diagnosis of a refusal (TLS 1.3: the broker's alert comes after
    the handshake) dials with the context the refused connection used, and a certificate installed over the
    configured files is read at the next connect, without a restart (docs/security.md, "Key rotation")."""
    pki = tls_broker.pki  # type: ignore[attr-defined]
    stranger = tmp_path / "stranger"
    make_pki(stranger, ca="stranger CA")     # a CA the broker does not know
    cert, key = tmp_path / "vehicle.crt", tmp_path / "vehicle.key"

    def install(d: Path) -> None:
        shutil.copyfile(d / "client.crt", cert)
        shutil.copyfile(d / "client.key", key)
        key.chmod(0o600)

    built: list[ssl.SSLContext] = []
    diagnosed: list[ssl.SSLContext] = []
    real_context, real_diagnose = tls.client_context, tls.diagnose

    def counted_context(cfg: TlsConfig) -> ssl.SSLContext:
        built.append(real_context(cfg))
        return built[-1]

    def watched_diagnose(host: str, port: int, ctx: ssl.SSLContext, timeout_s: float) -> tls.Refusal | None:
        diagnosed.append(ctx)
        return real_diagnose(host, port, ctx, timeout_s)

    monkeypatch.setattr(tls, "client_context", counted_context)
    monkeypatch.setattr(tls, "diagnose", watched_diagnose)
    install(stranger)
    tls_cfg = TlsConfig(ca=str(pki / "ca.crt"), cert=str(cert), key=str(key))
    up = Uplink(UplinkConfig(host="localhost", port=tls_broker.tls_port, tls=tls_cfg),  # type: ignore[attr-defined]
                VehicleConfig("VIN0001", "hu", "f"), boot_id="ab" * 16, birth_fields=dict,
                wall_ms=lambda: 1_767_225_600_000)
    try:
        assert up._one_connection() == NO_CONNACK
        assert up.last_connect_error is not None and up.last_connect_error["code"] == "client_cert_unknown_ca"
        assert len(built) == 1 and diagnosed == built, "diagnosed with the refused connection's own context"
        install(pki)
        up.start()
        deadline = time.monotonic() + 30
        while not up.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        assert up.connected, up.last_error
        assert len(built) == 2
    finally:
        up.stop()


def run_agent(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agent", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=30)


CASES = [
    ({"vehicle": {"id": "V", "device": "d", "fleet": "f", "colour": "red"}}, "vehicle.colour", "unknown key"),
    ({"vehicle": {"id": "V", "device": "d", "fleet": "f"}, "uplink": {"port": "1883"}}, "uplink.port",
     "expected an integer"),
    ({"vehicle": {"id": "V", "device": "d", "fleet": "f"}, "uplink": {"port": 70000}}, "uplink.port", "<= 65535"),
    ({"vehicle": {"id": "V", "device": "d"}}, "vehicle.fleet", "required"),
    ({"vehicle": {"id": "V/1", "device": "d", "fleet": "f"}}, "vehicle.id", "without '/'"),
    ({"vehicle": {"id": "V", "device": "d", "fleet": "f"}, "probes.nosuch": {"enabled": True}}, "probes.nosuch",
     "unknown probe"),
    ({"vehicle": {"id": "V", "device": "d", "fleet": "f"}, "uplink.tls": {"cert": "/x.crt"}}, "uplink.tls.key",
     "go together"),
    ({"vehicle": {"id": "V", "device": "d", "fleet": "f"}, "spool": {"max_mib": 0}}, "spool.max_mib", ">="),
    ({"vehicle": {"id": "V", "device": "d", "fleet": "f"}, "agent": {"log_level": "loud"}}, "agent.log_level",
     "one of"),
]


@pytest.mark.parametrize(("tables", "key", "words"), CASES)
def test_config_errors_exit_78_naming_the_key(tmp_path: Path, tables: dict, key: str, words: str) -> None:
    p = tmp_path / "agent.toml"
    p.write_text(to_toml(tables))
    for args in (["--config", str(p)], ["--config", str(p), "--check-config"]):
        r = run_agent(*args)
        assert r.returncode == 78, r.stderr
        assert key in r.stderr and words in r.stderr and str(p) in r.stderr


def test_dropin_overrides_and_errors_name_the_dropin(tmp_path: Path) -> None:
    p = tmp_path / "agent.toml"
    p.write_text(to_toml({"vehicle": {"id": "V", "device": "d", "fleet": "f"}}))
    (tmp_path / "agent.d").mkdir()
    (tmp_path / "agent.d" / "10-port.toml").write_text("[uplink]\nport = 8883\n")
    (tmp_path / "agent.d" / "20-bad.toml").write_text("[spool]\nmax_mb = 3\n")
    r = run_agent("--config", str(p), "--check-config")
    assert r.returncode == 78 and "20-bad.toml" in r.stderr and "spool.max_mb" in r.stderr
    (tmp_path / "agent.d" / "20-bad.toml").unlink()
    from agent.config import load

    assert load(p).uplink.port == 8883


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "agent.toml"
    p.write_text("[vehicle\nid=")
    r = run_agent("--config", str(p))
    assert r.returncode == 78 and "invalid TOML" in r.stderr
    r = run_agent("--config", str(tmp_path / "nope.toml"))
    assert r.returncode == 78 and "file not found" in r.stderr


def test_shipped_default_config_is_valid() -> None:
    r = run_agent("--config", str(REPO / "config" / "agent.toml"), "--check-config")
    assert r.returncode == 0, r.stderr


def test_check_config_validates_the_can_map_against_its_dbc(tmp_path: Path) -> None:
    """What would stop the daemon at start (exit 78) is caught by --check-config too, naming the key."""
    import opendbc

    dbc = Path(opendbc.__file__).parent / "dbc" / "FORD_CADS.dbc"
    p = tmp_path / "agent.toml"
    p.write_text(to_toml({"vehicle": {"id": "V", "device": "d", "fleet": "f"}, "probes.can": {"enabled": True}})
                 + to_toml({"probes.can.bus": [{"name": "cads", "interface": "virtual", "channel": "x",
                                                "dbc": str(dbc)}],
                            "probes.can.sensor": [{"name": "radar", "bus": "cads", "message": "MRR_Status_Radr"}]}))
    r = run_agent("--config", str(p), "--check-config")
    assert r.returncode == 78, r.stderr
    assert "probes.can.sensor[0].message" in r.stderr and "MRR_Status_Radr" in r.stderr
