"""Command line: `python -m tools.vm prepare` and `python -m tools.vm run [...] -- CMD ARGS...`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import jobfiles
from .errors import VmError, VmTimeout
from .runner import prepare, run_in_vm

EXIT_TIMEOUT = 124  # as timeout(1)
EXIT_VM_ERROR = 125  # as docker run: the harness failed, not the command


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected K=V, got {text!r}")
    return key, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tools.vm", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    sub.add_parser("prepare", help="install host packages, fetch the kernel, build the initramfs")
    run = sub.add_parser("run", help="boot a guest and run CMD in it (put CMD after --)")
    run.add_argument("--vcan", type=int, default=1, help="number of vcan interfaces (default 1)")
    run.add_argument("--timeout", type=float, default=300.0, help="seconds before the guest is killed")
    run.add_argument("--mem", type=int, default=1024, help="guest memory in MiB")
    run.add_argument("--smp", type=int, default=1, help="guest CPUs")
    run.add_argument("--env", type=_env_pair, action="append", default=[], metavar="K=V")
    run.add_argument("--cwd", help="working directory in the guest (default: the current one)")
    run.add_argument(
        "--rw",
        action="append",
        metavar="DIR",
        help="host dir shared read-write (repeatable; default: the top dir of --cwd)",
    )
    run.add_argument("--systemd", action="store_true", help="boot systemd as PID 1 on an overlay root")
    run.add_argument("--overlay-dir", help="systemd mode: tree copied over the guest root before boot")
    run.add_argument("--unit", action="append", default=[], help="systemd mode: unit to start before CMD")
    run.add_argument("--mask", action="append", default=[], help="systemd mode: extra unit to mask")
    run.add_argument(
        "--no-default-masks", action="store_true", help="systemd mode: do not mask the slow units masked by default"
    )
    run.add_argument("--device", action="append", default=[], help="extra qemu -device (e.g. bochs-display)")
    run.add_argument("--module", action="append", default=[], help="on-demand kernel module to load (bochs, ...)")
    run.add_argument("--qmp", help="Unix socket path where qemu serves QMP")
    run.add_argument("--console", action="store_true", help="print the guest console to stderr afterwards")
    run.add_argument("--keep", action="store_true", help="keep the run directory (control files, logs)")
    run.add_argument("-v", "--verbose", action="store_true", help="print timings to stderr")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.action == "prepare":
            prepared = prepare()
            print(f"kernel: {prepared.kernel.package} {prepared.kernel.version} ({prepared.kernel.image})")
            print(f"initramfs: {prepared.initramfs}")
            return 0
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        masks = [] if args.no_default_masks else list(jobfiles.DEFAULT_MASKS)
        result = run_in_vm(
            cmd,
            vcan=args.vcan,
            timeout_s=args.timeout,
            mem_mib=args.mem,
            smp=args.smp,
            env=dict(args.env),
            cwd=args.cwd,
            rw_dirs=args.rw,
            systemd=args.systemd,
            overlay_dir=args.overlay_dir,
            units=args.unit,
            masks=masks + args.mask,
            stream=sys.stdout,
            keep_run_dir=args.keep,
            devices=args.device,
            modules=args.module,
            qmp_socket=args.qmp,
        )
    except VmTimeout as exc:
        print(f"tools.vm: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    except VmError as exc:
        print(f"tools.vm: {exc}", file=sys.stderr)
        return EXIT_VM_ERROR
    if args.console:
        sys.stderr.write(result.console)
    if args.verbose:
        boot = f"{result.boot_s:.2f} s" if result.boot_s is not None else "n/a"
        print(
            f"tools.vm: exit {result.returncode}, guest uptime at command start {boot}, wall {result.wall_s:.2f} s",
            file=sys.stderr,
        )
    return result.returncode
