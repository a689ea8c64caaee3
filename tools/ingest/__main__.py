"""python -m tools.ingest: subscribe to the fleet's batches and store them."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys

from .consumer import Consumer
from .store import SqliteStore


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.ingest", description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--topic-prefix", default="icvq/v1")
    ap.add_argument("--db", default="ingest.db", help="SQLite file")
    ap.add_argument("--group", help="shared-subscription group ($share/<group>/...)")
    ap.add_argument("--duration", type=float, help="stop after this many seconds")
    ap.add_argument("--stats", action="store_true", help="print throughput lines on stderr")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    store = SqliteStore(args.db)
    c = Consumer(store, args.host, args.port, args.topic_prefix, args.group, stats=args.stats)
    signal.signal(signal.SIGTERM, lambda *_: c.stop_ev.set())
    try:
        c.run(args.duration)
    except KeyboardInterrupt:
        pass
    print(json.dumps({"stored": c.stored, "duplicates": c.duplicates, "rejected": c.rejected,
                      **store.counts()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
