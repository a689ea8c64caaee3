"""Builds the overlay tests/install/test_unit_in_vm.py copies over the guest's root before systemd boots.

What goes in, and why it is an honest install:
- etc/systemd/system/icvq-agent.service: systemd/icvq-agent.service, byte for byte; its test drop-ins
  (tests/install/dropins/vm-venv.conf, vm-test.conf) only set ExecStart=, short watchdog/restart timings,
  another RuntimeDirectory= name (tools/vm owns /run/icvq in the guest) and lift CPUQuota= (emulated CPU).
  No sandboxing directive is touched.
- etc/systemd/system/icvq-vmcheck.service: the same unit file again, with vm-check.conf making it a oneshot
  that runs vm_sandbox_check.py under the identical sandbox.
- usr/lib/sysusers.d/icvq.conf, usr/lib/tmpfiles.d/icvq.conf: systemd/icvq.sysusers and icvq.tmpfiles.
- opt/icvq/venv: the agent installed the way docs/install.md's virtual-environment route does it, on the
  host's Debian Python (/usr/bin/python3.X, same X as the interpreter running the tests). pyenv's Python
  cannot serve: it lives under /root, which is 0700 and which ProtectHome=yes hides from the service anyway.
  Instead of downloading, the venv gets copies of the distributions already installed for the tests
  (python-can, paho-mqtt, psutil, msgpack and what they require: the same versions the rest of the suite
  runs) and of the working tree's agent/ package, plus the bin/icvq-agent entry script pip would write.
- opt/icvq-vmtest: the agent config and vm_sandbox_check.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
DROPINS = HERE / "dropins"
UNIT = REPO / "systemd" / "icvq-agent.service"
VENV = Path("/opt/icvq/venv")
TESTDIR = Path("/opt/icvq-vmtest")
# Started first by vm_guest_run.py: its ordering dependencies keep both units loaded while inactive, so
# `systemctl show` still reports how their last run ended (systemd unloads unreferenced inactive units).
PIN_UNIT = """\
[Unit]
Description=icvq VM test: keep icvq-agent and icvq-vmcheck loaded
After=icvq-agent.service icvq-vmcheck.service

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
"""
ENTRY_SCRIPT = """\
#!{python}
import sys
from agent.__main__ import main
if __name__ == "__main__":
    sys.exit(main())
"""


class DeployError(RuntimeError):
    pass


def system_python() -> Path:
    """The distribution's interpreter with the same minor version as ours (compiled extensions must load)."""
    name = f"python{sys.version_info.major}.{sys.version_info.minor}"
    path = Path("/usr/bin") / name
    if not path.is_file():
        raise DeployError(f"/usr/bin/{name} not found: the guest service needs a system Python outside /root "
                          f"(Debian: apt-get install {name} python3-venv; `make deps`)")
    return path


def requirement_closure(root: str) -> list[str]:
    """Installed distributions `root` needs on this platform (extras off), root excluded, in a stable order."""
    env: dict[str, Any] = {**default_environment(), "extra": ""}
    seen: dict[str, None] = {}
    todo = [root]
    while todo:
        dist = metadata.distribution(todo.pop())
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            key = req.name.lower().replace("_", "-")
            if key not in seen:
                seen[key] = None
                todo.append(req.name)
    return sorted(seen)


def copy_distribution(name: str, site: Path) -> None:
    dist = metadata.distribution(name)
    for rel in dist.files or []:
        if rel.parts[0] == ".." or "__pycache__" in rel.parts:
            continue  # scripts outside site-packages; bytecode
        src = Path(str(dist.locate_file(rel)))
        if src.is_file():
            dst = site / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def build_venv(root: Path) -> Path:
    """The agent's virtual environment at <root>/opt/icvq/venv, usable at /opt/icvq/venv in the guest."""
    python = system_python()
    venv = root / VENV.relative_to("/")
    # What `python3 -m venv --without-pip` writes, without needing Debian's python3-venv package.
    site = venv / "lib" / python.name / "site-packages"
    site.mkdir(parents=True)
    (venv / "bin").mkdir()
    (venv / "bin" / "python3").symlink_to(python)
    (venv / "bin" / "python").symlink_to("python3")
    version = subprocess.run([str(python), "-c", "import platform; print(platform.python_version())"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (venv / "pyvenv.cfg").write_text(f"home = {python.parent}\ninclude-system-site-packages = false\n"
                                     f"version = {version}\n")
    shutil.copytree(REPO / "agent", site / "agent", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in requirement_closure("icvq-agent"):
        copy_distribution(name, site)
    # pip byte-compiles what it installs; without it every start under ProtectSystem=strict (and
    # PYTHONDONTWRITEBYTECODE=1) would compile the agent and its dependencies again.
    # -s/-p: tracebacks name /opt/icvq/venv/..., where the files are in the guest, not this build directory.
    proc = subprocess.run([str(python), "-m", "compileall", "-q", "-j", "0", "-s", str(root), "-p", "/", str(site)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise DeployError(f"compileall failed: {proc.stdout.strip()} {proc.stderr.strip()}")
    entry = venv / "bin" / "icvq-agent"
    entry.write_text(ENTRY_SCRIPT.format(python=VENV / "bin" / "python3"))
    entry.chmod(0o755)
    return venv


def build_overlay(root: Path, config_toml: str) -> None:
    units = root / "etc" / "systemd" / "system"
    for unit, dropins in (("icvq-agent.service", ("vm-venv.conf", "vm-test.conf")),
                          ("icvq-vmcheck.service", ("vm-check.conf",))):
        (units / f"{unit}.d").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(UNIT, units / unit)
        for name in dropins:
            shutil.copyfile(DROPINS / name, units / f"{unit}.d" / name)
    (units / "icvq-vmpin.service").write_text(PIN_UNIT)
    for src, dst in ((REPO / "systemd" / "icvq.sysusers", "usr/lib/sysusers.d/icvq.conf"),
                     (REPO / "systemd" / "icvq.tmpfiles", "usr/lib/tmpfiles.d/icvq.conf")):
        (root / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, root / dst)
    build_venv(root)
    test = root / TESTDIR.relative_to("/")
    test.mkdir(parents=True)
    (test / "agent.toml").write_text(config_toml)
    shutil.copyfile(HERE / "vm_sandbox_check.py", test / "vm_sandbox_check.py")
    # Whatever the umask of the test run: root-owned and world-readable, like a package install.
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode & 0o777
        path.chmod(mode | (0o755 if path.is_dir() or mode & 0o100 else 0o644))
