"""`python -m tools.bench [NAME ...] [--quick]`: run the benchmarks and print their markdown sections.

Each module in tools/bench/ with a `main(argv)` is one benchmark; its section goes to docs/performance.md.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import pkgutil
import sys
import time

from tools import bench

ORDER = ["spine", "display", "can", "backend"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__)
    ap.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(ORDER)})")
    ap.add_argument("--quick", action="store_true", help="pass --quick to those that support it")
    args = ap.parse_args(argv)
    found = [m.name for m in pkgutil.iter_modules(bench.__path__) if not m.name.startswith("_")]
    names = args.names or sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else 99, n))
    failed = []
    for name in names:
        mod = importlib.import_module(f"tools.bench.{name}")
        sub = ["--quick"] if args.quick and '"--quick"' in inspect.getsource(mod) else []
        t0 = time.monotonic()
        print(f"<!-- python -m tools.bench.{name} {' '.join(sub)} -->", flush=True)
        try:
            rc = mod.main(sub)
        except Exception as e:  # noqa: BLE001 - report and go on with the other benchmarks
            print(f"\n**{name} failed: {type(e).__name__}: {e}**\n", flush=True)
            rc = 1
        print(f"<!-- {name}: {time.monotonic() - t0:.0f} s, exit {rc} -->\n", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"benchmarks failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
