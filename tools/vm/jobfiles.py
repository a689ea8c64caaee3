"""Per-run control files the guest /init reads from the `icvqrun` share (mounted at /run/vmjob;
/run/icvq belongs to the agent under test)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import VmError

# Host variables a guest command needs to find the same interpreter and packages as on the host.
PASSTHROUGH_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "USER", "LOGNAME", "VIRTUAL_ENV")
PASSTHROUGH_PREFIXES = ("PYENV_", "PYTHON")
# Top-level host directories never shared writable by default (system trees, or replaced in the guest).
_NOT_SHARED = {"/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/run", "/sbin", "/sys", "/usr", "/var"}
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")

# Runs inside the guest root in both modes; `env -i` so the command sees only what job.sh exports.
WRAP_SH = """\
read -r up _ </proc/uptime && echo "$up" >/run/vmjob/started
env -i /bin/sh /run/vmjob/job.sh </dev/null >/run/vmjob/output 2>&1
echo $? >/run/vmjob/rc
sync
"""

# sysinit.target only, not multi-user: the host's own enabled services must not start in the guest.
ICVQ_TARGET = """\
[Unit]
Description=icvq VM test target
Requires=sysinit.target
After=sysinit.target
AllowIsolate=yes
"""

RUN_SERVICE = """\
[Unit]
Description=icvq VM test command
After=sysinit.target {after}
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
TimeoutStartSec=infinity
ExecStart=/bin/sh /run/vmjob/wrap.sh
"""

# Units and generators that cost seconds under TCG and that a unit test does not need (tmpfiles-setup
# alone took ~15 s; the host's generators ~1.5 s; modprobe@ cannot work, the host has no kmod).
DEFAULT_MASKS = (
    "systemd-tmpfiles-setup.service",
    "systemd-tmpfiles-clean.timer",
    "systemd-timesyncd.service",
    "systemd-pstore.service",
    "systemd-hwdb-update.service",
    "systemd-journal-catalog-update.service",
    "systemd-update-done.service",
    "ldconfig.service",
    "e2scrub_reap.service",
    "modprobe@configfs.service",
    "modprobe@dm_mod.service",
    "modprobe@fuse.service",
    "modprobe@loop.service",
    "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount",
    "dev-hugepages.mount",
    "systemd-sysv-generator",
    "postgresql-generator",
    "systemd-gpt-auto-generator",
    "systemd-cryptsetup-generator",
    "systemd-integritysetup-generator",
    "systemd-veritysetup-generator",
    "systemd-hibernate-resume-generator",
    "systemd-getty-generator",
)


@dataclass
class JobSpec:
    cmd: Sequence[str]
    cwd: Path
    env: dict[str, str]
    vcan: int = 1
    rw_dirs: list[Path] = field(default_factory=list)
    systemd: bool = False
    overlay_dir: Path | None = None
    units: Sequence[str] = ()
    masks: Sequence[str] = DEFAULT_MASKS
    modules: Sequence[str] = ()  # on-demand kernel modules to load, in load order
    devices: Sequence[str] = ()  # extra qemu -device specs
    qmp_socket: Path | None = None  # where qemu serves QMP, if anywhere


def guest_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in PASSTHROUGH_ENV or k.startswith(PASSTHROUGH_PREFIXES)}
    env.update(extra or {})
    bad = [k for k in env if not _ENV_NAME.match(k)]
    if bad:
        raise VmError(f"invalid environment variable names: {bad}")
    return env


def default_rw_dirs(cwd: Path) -> list[Path]:
    """The top-level directory holding cwd (e.g. /work), or cwd itself under /tmp (a guest tmpfs)."""
    parts = cwd.parts
    if len(parts) < 2:
        return []
    top = Path("/", parts[1])
    if str(top) == "/tmp":
        return [cwd]
    return [] if str(top) in _NOT_SHARED else [top]


# The guest mounts fresh tmpfs on these, hiding the host's copies that the read-only root share carries.
GUEST_TMPFS = ("/tmp", "/run")


def hidden_dirs_to_share(needed: list[Path], shares: list[Path]) -> list[Path]:
    """Directories the guest must see (the repository, the working directory) that lie under a guest tmpfs
    and no share covers: a CI clone in /tmp must still be importable inside the guest."""
    out: list[Path] = []
    for d in needed:
        if len(d.parts) < 3 or f"/{d.parts[1]}" not in GUEST_TMPFS:
            continue
        if not any(d == s or s in d.parents for s in [*shares, *out]):
            out.append(d)
    return out


def validate(spec: JobSpec) -> None:
    """Reject a bad spec on the host, before anything boots."""
    if not spec.cmd and not spec.systemd:
        raise VmError("no command given")
    if not 0 <= spec.vcan <= 64:
        raise VmError(f"vcan count {spec.vcan} out of range 0..64")
    if not spec.cwd.is_dir():
        raise VmError(f"working directory {spec.cwd} does not exist on the host")
    for path in spec.rw_dirs:
        if "\n" in str(path) or not path.is_absolute() or path == Path("/") or not path.is_dir():
            raise VmError(f"cannot share {str(path)!r} read-write: not an existing directory below /")
    if spec.overlay_dir is not None and not spec.overlay_dir.is_dir():
        raise VmError(f"overlay dir {spec.overlay_dir} does not exist")
    for unit in spec.units:
        _find_unit(unit, spec.overlay_dir)


def write(spec: JobSpec, run_dir: Path) -> None:
    """Write the control files; `spec` must have passed validate()."""
    (run_dir / "config.sh").write_text(
        f"ICVQ_MODE={'systemd' if spec.systemd else 'plain'}\nICVQ_VCAN={int(spec.vcan)}\n"
        f"ICVQ_MODULES={shlex.quote(' '.join(spec.modules))}\n"
    )
    (run_dir / "rw.list").write_text("".join(f"{p}\n" for p in spec.rw_dirs))
    lines = [f"export {shlex.quote(f'{k}={v}')}" for k, v in sorted(spec.env.items())]
    lines.append(f"cd {shlex.quote(str(spec.cwd))} || exit 125")
    lines.append("exec " + " ".join(shlex.quote(a) for a in spec.cmd))
    (run_dir / "job.sh").write_text("\n".join(lines) + "\n")
    (run_dir / "wrap.sh").write_text(WRAP_SH)
    if spec.systemd:
        _write_overlay(spec, run_dir / "overlay")


def _write_overlay(spec: JobSpec, overlay: Path) -> None:
    if spec.overlay_dir is not None:
        shutil.copytree(spec.overlay_dir, overlay, symlinks=True)
    etc = overlay / "etc"
    units_dir = etc / "systemd" / "system"
    wants = units_dir / "icvq.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    # Empty machine-id: systemd treats the boot as a fresh machine and generates a transient id.
    (etc / "machine-id").write_text("")
    (units_dir / "icvq.target").write_text(ICVQ_TARGET)
    for unit in spec.masks:
        # A generator is masked the same way as a unit, in its own directory.
        where = etc / "systemd" / "system-generators" if unit.endswith("-generator") else units_dir
        _symlink(Path("/dev/null"), where / unit)
    for unit in spec.units:
        _symlink(_find_unit(unit, spec.overlay_dir), wants / unit)
    if spec.cmd:
        (units_dir / "icvq-run.service").write_text(RUN_SERVICE.format(after=" ".join(spec.units)))
        _symlink(Path("/etc/systemd/system/icvq-run.service"), wants / "icvq-run.service")


def _find_unit(unit: str, overlay: Path | None) -> Path:
    """Guest path of `unit`, looked up in the overlay dir first, then in the host root."""
    template = re.sub(r"@[^.]*\.", "@.", unit)
    roots = [overlay, Path("/")] if overlay is not None else [Path("/")]
    for name in dict.fromkeys((unit, template)):
        for base in ("etc/systemd/system", "lib/systemd/system", "usr/lib/systemd/system"):
            if any((root / base / name).exists() for root in roots):
                return Path("/", base, name)
    raise VmError(f"unit {unit} found neither in the overlay dir nor on the host")


def _symlink(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)
