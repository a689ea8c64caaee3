"""`icvq`: the field engineer's command line. A dispatcher: the subcommands live in agent/fieldcli/.

Every subcommand shows the exit codes in its `--help` (fieldcli.client.EPILOG), takes `-c/--config` before or
after its name, and ends with a one-line error instead of a traceback when a file is missing or unreadable.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from . import __version__, fieldcli, tls, wire
from .config import load
from .errors import EX_CONFIG, ConfigError, WireError
from .fieldcli.client import EPILOG, EX_DATAERR, EX_IOERR, EX_NOINPUT, EXIT_OK, config_path

Handler = Callable[[argparse.Namespace], int]


def cmd_check_config(args: argparse.Namespace) -> int:
    path = config_path(args)
    try:
        cfg = load(path)
        tls.check(cfg)
    except ConfigError as e:
        if args.json:
            print(json.dumps({"ok": False, "path": path, "errors": [x.as_dict() for x in e.errors]}, indent=2))
        else:
            for x in e.errors:
                print(f"icvq: config error: {x}", file=sys.stderr)
            if len(e.errors) > 1:
                print(f"icvq: {len(e.errors)} errors in {path}", file=sys.stderr)
        return EX_CONFIG
    if args.json:
        print(json.dumps({"ok": True, "errors": [], "sources": list(cfg.sources), "digest": cfg.digest,
                          "config": cfg.plain(redact=True)}, indent=2))
    else:
        print(f"config OK: {', '.join(cfg.sources)} (digest {cfg.digest})")
    return EXIT_OK


def cmd_decode(args: argparse.Namespace) -> int:
    if args.file in (None, "-"):
        data = sys.stdin.buffer.read()
    else:
        try:
            with open(args.file, "rb") as f:
                data = f.read()
        except OSError as e:
            print(f"icvq: {args.file}: {e.strerror}", file=sys.stderr)
            return EX_NOINPUT
    try:
        obj = wire.decode(data)
    except WireError as e:
        print(f"icvq: not a valid icvq payload: {e}", file=sys.stderr)
        return EX_DATAERR
    print(json.dumps(wire.to_json(obj), indent=2 if args.pretty else None))
    return EXIT_OK


def parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    ap = argparse.ArgumentParser(
        prog="icvq", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="icvq field tool: status, events, bundles, decoding. Finds the agent via --config, "
        "$ICVQ_CONFIG or /etc/icvq/agent.toml (-c and --socket go before or after the subcommand).")
    ap.add_argument("--version", action="version", version=f"icvq {__version__}")
    ap.add_argument("--config", "-c", default=None,
                    help="agent config (default: $ICVQ_CONFIG, else /etc/icvq/agent.toml)")
    ap.add_argument("--socket", default=None,
                    help="control socket (default: $ICVQ_SOCKET, else [control] socket of the config)")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    handlers: dict[str, Handler] = {}

    p = sub.add_parser("check-config", help="validate the agent config; every error in one run (exit 78 when "
                       "invalid)")
    p.add_argument("--config", "-c", default=argparse.SUPPRESS,
                   help="agent config (default: $ICVQ_CONFIG, else /etc/icvq/agent.toml); drop-ins in agent.d/")
    p.add_argument("--json", action="store_true",
                   help='JSON on stdout: {"ok": true, "config": ...} or {"ok": false, "errors": [...]}')
    handlers["check-config"] = cmd_check_config

    p = sub.add_parser("decode", help="print a wire payload (batch or status) as JSON")
    p.add_argument("file", nargs="?", help="payload file, or - (the default) for stdin")
    p.add_argument("--pretty", action="store_true", help="indent the JSON")
    handlers["decode"] = cmd_decode
    fieldcli.register(sub, handlers)
    for sp in sub.choices.values():
        sp.epilog = EPILOG
        sp.formatter_class = argparse.RawDescriptionHelpFormatter
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
    except OSError as e:
        # A file we were told to write (dump -o DIR/x) or read: one line, never a traceback.
        where = f"{e.filename}: " if e.filename else ""
        print(f"icvq: {where}{e.strerror or e}", file=sys.stderr)
        return EX_IOERR


if __name__ == "__main__":
    sys.exit(main())
