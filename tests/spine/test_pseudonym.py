"""The fleet-key pseudonym (agent/pseudonym.py): format, key-file rules, and where it replaces the VIN."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import pytest

from agent.config import VehicleConfig, from_mapping
from agent.errors import ConfigError
from agent.pseudonym import pseudonym, read_key, wire_vehicle

KEY = "3f" * 32


def _keyfile(tmp: Path, text: str = KEY + "\nsecond line is ignored\n", mode: int = 0o600) -> Path:
    p = tmp / "fleet.key"
    p.write_text(text)
    os.chmod(p, mode)
    return p


def test_pseudonym_is_a_truncated_hmac_that_is_a_valid_topic_level() -> None:
    want = "ps-" + hmac.new(KEY.encode(), b"LSVAB4187E2123456", hashlib.sha256).hexdigest()[:32]
    p = pseudonym(KEY.encode(), "LSVAB4187E2123456")
    assert p == want and len(p) == 35
    VehicleConfig(id=p, device="hu", fleet="f").validate()
    assert pseudonym(KEY.encode(), "LSVAB4187E2123457") != p
    assert pseudonym(b"another key of at least 32 chars!!", "LSVAB4187E2123456") != p


def test_key_is_the_first_line_of_a_private_file(tmp_path: Path) -> None:
    assert read_key(str(_keyfile(tmp_path))) == KEY.encode()


@pytest.mark.parametrize(("text", "mode", "message"), [
    (KEY, 0o640, "accessible by group or others (mode 0640)"),
    (KEY, 0o604, "accessible by group or others"),
    ("short\n", 0o600, "shorter than 32 characters"),
])
def test_bad_key_files_are_refused_naming_the_file(tmp_path: Path, text: str, mode: int, message: str) -> None:
    p = _keyfile(tmp_path, text, mode)
    with pytest.raises(ConfigError) as e:
        read_key(str(p))
    assert message in str(e.value) and str(p) in str(e.value) and e.value.key == "vehicle.pseudonym_key_file"


def test_missing_key_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the fleet key"):
        read_key(str(tmp_path / "nope"))


def test_wire_vehicle_replaces_only_the_id(tmp_path: Path) -> None:
    v = VehicleConfig(id="LSVAB4187E2123456", device="hu", fleet="f", pseudonym_key_file=str(_keyfile(tmp_path)))
    w = wire_vehicle(v)
    assert w.id == pseudonym(KEY.encode(), v.id) and (w.device, w.fleet) == ("hu", "f")
    plain = VehicleConfig(id="LSVAB4187E2123456", device="hu", fleet="f")
    assert wire_vehicle(plain) is plain


def test_key_path_must_be_absolute() -> None:
    with pytest.raises(ConfigError, match="absolute"):
        from_mapping({"vehicle": {"id": "V", "device": "hu", "fleet": "f", "pseudonym_key_file": "fleet.key"}})


def test_check_config_reads_the_key_file(tmp_path: Path) -> None:
    """`icvq-agent --check-config` catches an unreadable or too-open key before the agent starts (exit 78)."""
    import subprocess
    import sys

    from agentproc import REPO, base_config, write_config

    key = _keyfile(tmp_path, mode=0o644)
    cfg = write_config(tmp_path, base_config(tmp_path, 1883, vehicle={"pseudonym_key_file": str(key)}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = subprocess.run([sys.executable, "-m", "agent", "--config", str(cfg), "--check-config"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 78 and "vehicle.pseudonym_key_file" in run.stderr and str(key) in run.stderr
    os.chmod(key, 0o600)
    run = subprocess.run([sys.executable, "-m", "agent", "--config", str(cfg), "--check-config"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
