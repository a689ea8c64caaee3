"""Command line: `python -m tools.arm64 prepare | test [--seconds N] [--keep] | python -- ARGS...`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .cache import ArmError


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.arm64", description=__doc__)
    sub = ap.add_subparsers(dest="action", required=True)
    sub.add_parser("prepare", help="build (or reuse) the cached arm64 root and wheel directory")
    test = sub.add_parser("test", help="run the agent end to end under qemu-aarch64-static")
    test.add_argument("--seconds", type=float, default=10.0, help="how long the agent runs (default 10)")
    test.add_argument("--keep", action="store_true", help="keep the temporary directory (config, log, spool)")
    py = sub.add_parser("python", help="run the emulated python3.11 with the agent's PYTHONPATH")
    py.add_argument("args", nargs=argparse.REMAINDER, help="-- ARGS...")
    args = ap.parse_args(argv)
    from . import runner

    try:
        if args.action == "prepare":
            emu = runner.emulator()
            print(f"root: {emu.root}\nsite: {emu.site}\nqemu: {emu.qemu}")
            return 0
        if args.action == "test":
            return runner.run_test(args.seconds, args.keep)
        rest = args.args[1:] if args.args[:1] == ["--"] else args.args
        return runner.run_python(rest)
    except ArmError as e:
        print(f"arm64: FAIL: {e}", file=sys.stderr)
        print("arm64: 0 passed, 1 failed", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
