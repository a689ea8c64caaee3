"""TLS with client certificates against a real mosquitto (`require_certificate true`), and config errors."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from agentproc import REPO, AgentProc, base_config, to_toml, write_config
from broker import Mosquitto, free_port
from recorder import Recorder


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
            "-subj", "/CN=icvq test CA", cwd=d)
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
