"""The scanout helper's unit (systemd/icvq-drm-sampler.service), its sysusers file and the agent drop-in, checked
with the real systemd tools; the exposure figure docs/display.md quotes is enforced here. A missing tool fails."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "icvq-drm-sampler.service"
SYSUSERS = REPO / "systemd" / "icvq-drm-sampler.sysusers"
MAX_EXPOSURE = 1.0   # measured 0.9 (docs/display.md)


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install systemd", pytrace=False)
    return path


def staged(tmp_path: Path) -> Path:
    """verify wants ExecStart= to exist: point it at a stub, change nothing else."""
    stub = tmp_path / "icvq-drm-sampler"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = UNIT.read_text()
    out = text.replace("ExecStart=/usr/bin/icvq-drm-sampler ", f"ExecStart={stub} ")
    assert out.count(str(stub)) == 1
    unit = tmp_path / UNIT.name
    unit.write_text(out)
    return unit


def test_unit_verifies_cleanly(tmp_path: Path) -> None:
    unit = staged(tmp_path)
    proc = subprocess.run([tool("systemd-analyze"), "verify", str(unit)], capture_output=True, text=True,
                          timeout=120)
    ours = [ln for ln in (proc.stdout + proc.stderr).splitlines() if unit.name in ln or str(tmp_path) in ln]
    assert not ours, ours


def test_exposure(tmp_path: Path) -> None:
    proc = subprocess.run([tool("systemd-analyze"), "security", "--offline=true", "--no-pager",
                           str(staged(tmp_path))], capture_output=True, text=True, timeout=120)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    assert float(m.group(1)) <= MAX_EXPOSURE


def test_only_capability_is_sys_admin_and_no_network() -> None:
    text = UNIT.read_text()
    assert re.search(r"^CapabilityBoundingSet=CAP_SYS_ADMIN$", text, re.M)
    assert re.search(r"^AmbientCapabilities=CAP_SYS_ADMIN$", text, re.M)
    assert re.search(r"^PrivateNetwork=yes$", text, re.M) and re.search(r"^RestrictAddressFamilies=AF_UNIX$",
                                                                           text, re.M)
    assert re.search(r"^DeviceAllow=char-drm r$", text, re.M)


def test_sysusers_creates_the_user_and_groups(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    for f in ("passwd", "group"):
        (root / "etc" / f).write_text("")
    (root / "etc" / "group").write_text("video:x:44:\nicvq:x:990:\n")
    (root / "etc" / "passwd").write_text("icvq:x:990:990::/var/lib/icvq:/usr/sbin/nologin\n")
    proc = subprocess.run([tool("systemd-sysusers"), f"--root={root}", str(SYSUSERS)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    groups = (root / "etc" / "group").read_text()
    assert re.search(r"^video:x:44:icvq-drm$", groups, re.M), groups
    assert re.search(r"^icvq-drm:x:\d+:icvq$", groups, re.M), groups
    assert "icvq-drm:" in (root / "etc" / "passwd").read_text()
