"""Boot the guest under qemu (TCG), run one command, collect its output and exit code."""

from __future__ import annotations

import codecs
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from . import cache, hostdeps, jobfiles
from .errors import VmError, VmTimeout
from .initramfs import ensure_initramfs
from .kernel import Kernel, ensure_kernel

REPO = Path(__file__).resolve().parents[2]  # guests import the agent and the tests from here
QEMU = "qemu-system-x86_64"
# qboot hands over to the kernel in ~0.1 s where SeaBIOS takes ~0.5 s under TCG.
QBOOT = Path("/usr/share/qemu/qboot.rom")
# quiet/loglevel keep the console short; the i8042 probes and CPU mitigations only cost boot time.
KERNEL_ARGS = (
    "console=ttyS0 panic=-1 quiet loglevel=0 rdinit=/init mitigations=off "
    "i8042.noaux i8042.nokbd i8042.nopnp no_timer_check random.trust_cpu=on"
)
SYSTEMD_ARGS = "systemd.unit=icvq.target systemd.show_status=false"

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class VmResult:
    returncode: int
    output: str  # the command's stdout+stderr, interleaved as written; never kernel messages
    console: str  # serial console (kernel, /init, systemd), for diagnosis only
    boot_s: float | None  # guest uptime when the command started
    wall_s: float  # host wall time from qemu start to exit


@dataclass(frozen=True)
class Prepared:
    kernel: Kernel
    initramfs: Path


def prepare(install: bool = True) -> Prepared:
    """Install host packages if missing and build (or reuse) the cached kernel and initramfs."""
    if install:
        hostdeps.ensure_packages()
    if shutil.which(QEMU) is None:
        raise VmError(f"{QEMU} not found (install qemu-system-x86)")
    kernel = ensure_kernel()
    return Prepared(kernel, ensure_initramfs(kernel))


def run_in_vm(
    cmd: Sequence[str],
    *,
    vcan: int = 1,
    timeout_s: float = 300.0,
    mem_mib: int = 1024,
    smp: int = 1,
    env: Mapping[str, str] | None = None,
    cwd: PathLike | None = None,
    rw_dirs: Sequence[PathLike] | None = None,
    systemd: bool = False,
    overlay_dir: PathLike | None = None,
    units: Sequence[str] = (),
    masks: Sequence[str] = jobfiles.DEFAULT_MASKS,
    stream: TextIO | None = None,
    keep_run_dir: bool = False,
    devices: Sequence[str] = (),
    modules: Sequence[str] = (),
    qmp_socket: PathLike | None = None,
) -> VmResult:
    """Run `cmd` as root in a fresh guest whose root is the host's, read-only, with vcan0..vcan{vcan-1}.

    Writable in the guest: /tmp, /run (tmpfs) and `rw_dirs` (default: the top-level host directory
    holding `cwd`, e.g. /work), which are the host directories themselves. `env` is added to a
    pass-through of PATH/HOME/LANG/PYENV_*/PYTHON*. `systemd=True` boots systemd as PID 1 on an
    overlay root instead; `overlay_dir` is copied over that root and `units` are started before `cmd`
    (which may then be empty: the guest must power itself off). `devices` are extra qemu `-device`
    specs (e.g. "bochs-display,xres=1024,yres=768"), `modules` on-demand kernel modules to load for
    them (kernel.ON_DEMAND_MODULES), `qmp_socket` a Unix socket path where qemu serves QMP (e.g. for
    `screendump` while the guest runs). Raises VmError if the guest cannot boot or report, VmTimeout
    after `timeout_s`.
    """
    work_dir = Path(cwd if cwd is not None else os.getcwd()).resolve()
    shares = [Path(p).resolve() for p in rw_dirs] if rw_dirs is not None else jobfiles.default_rw_dirs(work_dir)
    shares += jobfiles.hidden_dirs_to_share([work_dir, REPO], shares)
    spec = jobfiles.JobSpec(
        cmd=list(cmd),
        cwd=work_dir,
        env=jobfiles.guest_env(env),
        vcan=vcan,
        rw_dirs=sorted(shares, key=lambda p: len(p.parts)),
        systemd=systemd,
        overlay_dir=Path(overlay_dir) if overlay_dir is not None else None,
        units=units,
        masks=masks,
    )
    jobfiles.validate(spec)
    prepared = prepare()
    spec.modules = prepared.kernel.load_order(tuple(modules))
    spec.devices = tuple(devices)
    spec.qmp_socket = Path(qmp_socket) if qmp_socket is not None else None
    runs = cache.cache_root() / "runs"
    runs.mkdir(exist_ok=True)
    _prune(runs)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=runs))
    try:
        jobfiles.write(spec, run_dir)
        result = _boot(prepared, spec, run_dir, mem_mib, smp, timeout_s, stream)
    except VmError as exc:
        exc.args = (f"{exc.args[0]}\n(run dir kept: {run_dir})",)
        raise
    if not keep_run_dir:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result


def _prune(runs: Path, max_age_s: float = 86400.0) -> None:
    """Drop run dirs kept after failures once they are old enough not to be under inspection."""
    cutoff = time.time() - max_age_s
    for old in runs.glob("run-*"):
        try:
            if old.stat().st_mtime < cutoff:
                shutil.rmtree(old, ignore_errors=True)
        except FileNotFoundError:
            pass


def _virtfs(path: Path, tag: str, readonly: bool) -> list[str]:
    escaped = str(path).replace(",", ",,")  # qemu option syntax
    opts = f"local,path={escaped},mount_tag={tag},security_model=none,multidevs=remap"
    return ["-virtfs", opts + (",readonly=on" if readonly else "")]


def qemu_command(prepared: Prepared, spec: jobfiles.JobSpec, run_dir: Path, mem_mib: int, smp: int) -> list[str]:
    append = KERNEL_ARGS + (" " + SYSTEMD_ARGS if spec.systemd else "")
    argv = [QEMU, "-accel", "tcg", "-cpu", "max", "-m", str(mem_mib), "-smp", str(smp)]
    argv += ["-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none", "-no-reboot"]
    argv += ["-serial", f"file:{run_dir / 'console.log'}"]
    argv += ["-kernel", str(prepared.kernel.image), "-initrd", str(prepared.initramfs), "-append", append]
    if QBOOT.is_file():
        argv += ["-bios", str(QBOOT)]
    argv += _virtfs(Path("/"), "hostroot", readonly=True)
    argv += _virtfs(run_dir, "icvqrun", readonly=False)
    for i, path in enumerate(spec.rw_dirs):
        argv += _virtfs(path, f"icvqrw{i}", readonly=False)
    for dev in spec.devices:
        argv += ["-device", dev]
    if spec.qmp_socket is not None:
        argv += ["-qmp", f"unix:{str(spec.qmp_socket).replace(',', ',,')},server=on,wait=off"]
    return argv


def _boot(
    prepared: Prepared,
    spec: jobfiles.JobSpec,
    run_dir: Path,
    mem_mib: int,
    smp: int,
    timeout_s: float,
    stream: TextIO | None,
) -> VmResult:
    argv = qemu_command(prepared, spec, run_dir, mem_mib, smp)
    output_path = run_dir / "output"
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    offset = 0
    start = time.monotonic()
    with (run_dir / "qemu.stderr").open("wb") as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        try:
            while True:
                exited = proc.poll() is not None
                if stream is not None:
                    offset = _pump(output_path, offset, decoder, stream)
                if exited:
                    break
                if time.monotonic() - start > timeout_s:
                    raise VmTimeout(
                        f"guest did not finish within {timeout_s:.0f} s",
                        console=_tail(run_dir / "console.log"),
                        output=_read(output_path),
                    )
                time.sleep(0.1)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    wall = time.monotonic() - start
    return _collect(spec, run_dir, proc.returncode, wall)


def _collect(spec: jobfiles.JobSpec, run_dir: Path, qemu_rc: int, wall: float) -> VmResult:
    console = _read(run_dir / "console.log")
    qemu_err = _read(run_dir / "qemu.stderr").strip()
    if qemu_rc != 0:
        raise VmError(f"{QEMU} exited with {qemu_rc}: {qemu_err}", console=_tail(run_dir / "console.log"))
    errors = [line for line in console.splitlines() if "ICVQ-INIT-ERROR" in line or "Kernel panic" in line]
    if errors:
        raise VmError(f"guest setup failed: {errors[0].strip()}", console=_tail(run_dir / "console.log"))
    started = _read(run_dir / "started").strip()
    boot_s = float(started) if started else None
    rc_text = _read(run_dir / "rc").strip()
    if not rc_text:
        if spec.systemd and not spec.cmd:
            return VmResult(0, "", console, boot_s, wall)  # the caller's units powered the guest off
        raise VmError("guest powered off without reporting an exit code", console=_tail(run_dir / "console.log"))
    return VmResult(int(rc_text), _read(run_dir / "output"), console, boot_s, wall)


def _pump(path: Path, offset: int, decoder: codecs.IncrementalDecoder, stream: TextIO) -> int:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            chunk = fh.read()
    except FileNotFoundError:
        return offset
    if chunk:
        stream.write(decoder.decode(chunk))
        stream.flush()
    return offset + len(chunk)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _tail(path: Path, lines: int = 40) -> str:
    return "\n".join(_read(path).splitlines()[-lines:])
