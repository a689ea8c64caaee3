"""`icvq-agent` and `python -m agent`: parse the arguments, read and check the config, then import the daemon
and run it (agent/daemon.py run). `agent.daemon.main` is this same entry, for callers that run it in-process.

No threads of its own. The order is the point (issue 13: idle RSS). Start-up's code is released before the
daemon's long-lived modules (pipeline, uplink and paho, spool, black box) are imported: argparse and gettext
(≈ 300 KiB of Python objects by tracemalloc), the config loader with tomllib and pkgutil (≈ 190 KiB,
agent/config_load.py), so their freed memory is what those imports fill, and nothing of them is held at idle;
agent.pseudonym goes once the daemon has started (daemon.AFTER_START). Only modules this call imported are
released: an in-process caller keeps its own. VmRSS after 20 s idle at the bench config (the daemon's RSS as
`python -m tools.bench.lean --only rss` takes it, both sides byte-compiled, two pairs): 29.22 → 28.59 MiB. The
benchmark's floor leaves the released modules out too, so this is the car's saving more than the ratio's.
"""

from __future__ import annotations

import os
import sys

from . import __version__


def main(argv: list[str] | None = None) -> int:
    # Only what this run imports is released: an in-process caller (a test, a benchmark) keeps its modules.
    keep = frozenset(sys.modules)
    import argparse

    ap = argparse.ArgumentParser(prog="icvq-agent", description="In-vehicle quality telemetry agent.")
    ap.add_argument("--config", "-c", default=os.environ.get("ICVQ_CONFIG"),
                    help="main config file (default /etc/icvq/agent.toml; drop-ins in agent.d/ beside it)")
    ap.add_argument("--check-config", action="store_true", help="validate the config and exit (78 if invalid)")
    ap.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    ap.add_argument("--version", action="version", version=f"icvq-agent {__version__}")
    args = ap.parse_args(argv)
    config_path: str | None = args.config
    check_only: bool = args.check_config
    log_level: str | None = args.log_level
    del argparse, ap, args  # this frame lives as long as the daemon: nothing of argparse may stay in it

    from . import config

    config.release(("argparse", "gettext"), keep=keep)  # now, before anything else could import them too
    from .errors import EX_CONFIG, ConfigError
    from .pseudonym import wire_vehicle

    try:
        cfg = config.load(config_path, lean=True)
        wire_vehicle(cfg.vehicle)  # the fleet key file is read (and its mode checked) by --check-config too
    except ConfigError as e:
        print(f"icvq-agent: config error: {e}", file=sys.stderr)
        return EX_CONFIG
    if check_only:
        from . import tls

        try:
            tls.check(cfg)
        except ConfigError as e:
            print(f"icvq-agent: config error: {e}", file=sys.stderr)
            return EX_CONFIG
        print(f"config OK: {', '.join(cfg.sources)} (digest {cfg.digest})")
        return 0
    del wire_vehicle  # Daemon() reads the fleet key again; agent.pseudonym goes once it has started
    config.release(config.STARTUP_MODULES, keep=keep)

    from .daemon import run

    return run(cfg, config_path, log_level, lean=True, keep=keep)


if __name__ == "__main__":
    sys.exit(main())
