"""python -m tools.ingest [run] ...: subscribe to the fleet's batches and status and store them.

Other commands: `python -m tools.ingest report --db DB -o report.html` (fleet quality report),
`python -m tools.ingest predict --db DB` (rising-risk vehicles and regressing software versions).
Without a command, `run` is meant (the original interface).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
from collections.abc import Callable

from agent import wire

from . import tlsopts
from .consumer import Consumer
from .pseudonyms import Pseudonyms
from .store import open_store

EPILOG = """\
other commands:
  report   python -m tools.ingest report --db DB -o report.html   (self-contained HTML fleet report)
  predict  python -m tools.ingest predict --db DB [--json]        (rising risk, software regressions)
  campaign python -m tools.ingest campaign --fleet F publish FILE | list | retire ID   (black-box campaigns)
  pseudonym python -m tools.ingest pseudonym --key K [--vins F] [VIN ...]  (vehicle pseudonyms, for provisioning)

Several workers with the same --group split the traffic (MQTT v5 shared subscription); give each a distinct
--worker number (or --client-id) and restart it under the same one: the broker keeps what it had not
acknowledged in that worker's session. --db takes a SQLite path (default) or a postgresql:// URL.
"""


def run_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tools.ingest [run]", description=__doc__,
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    tlsopts.add_broker_arguments(ap)
    ap.add_argument("--db", default="ingest.db",
                    help="SQLite file (default %(default)s) or postgresql://user@host:port/dbname")
    ap.add_argument("--group", help="shared-subscription group: workers with the same group split the batches")
    ap.add_argument("--worker", type=int, default=0, help="worker number within the group (default 0); names "
                    "the default client id, so a restarted worker resumes its session")
    ap.add_argument("--client-id", help="MQTT client id (default icvq-ingest-<group>-<host>-<worker> with "
                    "--group; otherwise none: a clean, non-persistent session)")
    ap.add_argument("--session-expiry", type=int, default=3600, metavar="S",
                    help="how long the broker keeps a persistent session's messages (default %(default)s s)")
    ap.add_argument("--receive-max", type=int, default=256, metavar="N",
                    help="unacknowledged messages the broker may send at once (default %(default)s)")
    ap.add_argument("--max-group", type=int, default=1000, metavar="N",
                    help="messages per store transaction (default %(default)s)")
    ap.add_argument("--max-payload", type=int, default=wire.DEFAULT_LIMITS.max_payload, metavar="BYTES",
                    help="larger payloads become dead letters (default %(default)s)")
    ap.add_argument("--leave", action="store_true",
                    help="on stop, leave the group for good: drain this worker's session, then end it "
                    "(scale-down; without it the broker keeps the session's share for a restart)")
    ap.add_argument("--no-status", action="store_true", help="do not subscribe to status (birth/death)")
    ap.add_argument("--duration", type=float, help="stop after this many seconds")
    ap.add_argument("--stats", action="store_true", help="print throughput and lag lines on stderr")
    ap.add_argument("--stats-interval", type=float, default=5.0, metavar="S", help="(default %(default)s s)")
    ap.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    tlsopts.add_arguments(ap)
    ap.add_argument("--pseudonym-key", metavar="FILE",
                    help="fleet key of cars that send a pseudonym instead of the VIN (vehicle.pseudonym_key_file); "
                         "with --vin-register, pseudonyms are mapped back and VINs stored")
    ap.add_argument("--vin-register", metavar="FILE", help="the fleet's VINs, one per line (with --pseudonym-key)")
    return ap


def run(argv: list[str]) -> int:
    args = run_parser().parse_args(argv)
    logging.basicConfig(level=getattr(logging, args.log_level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    client_id = args.client_id
    if client_id is None:
        client_id = f"icvq-ingest-{args.group}-{socket.gethostname()}-{args.worker}" if args.group else ""
    limits = wire.Limits(max_payload=args.max_payload, max_inflated=max(args.max_payload * 4,
                                                                        wire.DEFAULT_LIMITS.max_inflated))
    if bool(args.pseudonym_key) != bool(args.vin_register):
        run_parser().error("--pseudonym-key and --vin-register go together")
    resolve = Pseudonyms.from_files(args.pseudonym_key, args.vin_register).resolve if args.pseudonym_key else None
    store = open_store(args.db)
    c = Consumer(store, args.host, args.port, args.topic_prefix, args.group, client_id, stats=args.stats,
                 session_expiry_s=args.session_expiry, receive_max=args.receive_max, max_group=args.max_group,
                 limits=limits, stats_interval_s=args.stats_interval, status=not args.no_status,
                 name=f"ingest[{client_id or 'solo'}]", leave_on_stop=args.leave, tls_context=tlsopts.context(args),
                 resolve=resolve)
    signal.signal(signal.SIGTERM, lambda *_: c.stop_ev.set())
    try:
        c.run(args.duration)
    except KeyboardInterrupt:
        pass
    print(json.dumps({"stored": c.stored, "duplicates": c.duplicates, "rejected": c.rejected,
                      "conflicts": c.stats.conflicts, "status_replays": c.stats.status_replays,
                      "records_stored": c.stats.records, "decode_s": round(c.stats.decode_s, 3),
                      "write_s": round(c.stats.write_s, 3), **store.counts()}))
    store.close()
    return 0


def report(argv: list[str]) -> int:
    from .report import main as report_main

    return report_main(argv)


def predict(argv: list[str]) -> int:
    from .predict_cli import main as predict_main

    return predict_main(argv)


def pseudonym(argv: list[str]) -> int:
    from .pseudonyms import main as pseudonym_main

    return pseudonym_main(argv)


def campaign(argv: list[str]) -> int:
    from .campaign import main as campaign_main

    return campaign_main(argv)


COMMANDS: dict[str, Callable[[list[str]], int]] = {"run": run, "report": report, "predict": predict,
                                                   "pseudonym": pseudonym, "campaign": campaign}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    cmd = args.pop(0) if args and args[0] in COMMANDS else "run"
    return COMMANDS[cmd](args)


if __name__ == "__main__":
    sys.exit(main())
