"""`icvq`: the field engineer's command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from . import __version__, fieldcli, tls, wire
from .config import load
from .errors import EX_CONFIG, ConfigError, WireError

Handler = Callable[[argparse.Namespace], int]


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        cfg = load(args.config)
        tls.check(cfg)
    except ConfigError as e:
        print(f"icvq: config error: {e}", file=sys.stderr)
        return EX_CONFIG
    if args.json:
        print(json.dumps({"ok": True, "sources": list(cfg.sources), "digest": cfg.digest,
                          "config": cfg.plain(redact=True)}, indent=2))
    else:
        print(f"config OK: {', '.join(cfg.sources)} (digest {cfg.digest})")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    if args.file in (None, "-"):
        data = sys.stdin.buffer.read()
    else:
        with open(args.file, "rb") as f:
            data = f.read()
    try:
        obj = wire.decode(data)
    except WireError as e:
        print(f"icvq: not a valid icvq payload: {e}", file=sys.stderr)
        return 65  # EX_DATAERR
    print(json.dumps(wire.to_json(obj), indent=2 if args.pretty else None))
    return 0


def parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    ap = argparse.ArgumentParser(prog="icvq", description="icvq field tool: status, events, bundles, decoding. "
                                 "Finds the agent via --config, $ICVQ_CONFIG or /etc/icvq/agent.toml.")
    ap.add_argument("--version", action="version", version=f"icvq {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True)
    handlers: dict[str, Handler] = {}

    p = sub.add_parser("check-config", help="validate the agent config (exit 78 when invalid)")
    p.add_argument("--config", "-c", default=os.environ.get("ICVQ_CONFIG"))
    p.add_argument("--json", action="store_true")
    handlers["check-config"] = cmd_check_config

    p = sub.add_parser("decode", help="print a wire payload (batch or status) as JSON")
    p.add_argument("file", nargs="?", help="payload file, or - for stdin")
    p.add_argument("--pretty", action="store_true")
    handlers["decode"] = cmd_decode
    fieldcli.register(sub, handlers)
    return ap, handlers


def main(argv: list[str] | None = None) -> int:
    ap, handlers = parser()
    args = ap.parse_args(argv)
    try:
        return handlers[args.cmd](args)
    except BrokenPipeError:
        # `icvq tail | head`: stop quietly, and keep Python from complaining while flushing at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
