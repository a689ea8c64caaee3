"""python -m tools.ingest campaign publish|list|retire: the backend's side of black-box collection campaigns.

`publish FILE|-` validates the JSON document with the agent's own schema (agent/blackbox/campaign.py, against
the largest ring an agent may have, 600 s; each agent checks its own; one already ended is refused too), then
publishes it retained (QoS 1) on `<prefix>/<fleet>/_campaigns/<id>`, or
`<prefix>/<fleet>/<vehicle>/_campaigns/<id>` with --vehicle.
`list` reads the retained documents and the retained birth messages (which campaigns each unit runs).
`retire ID` republishes the document with `end` = now — units offline now learn it when they reconnect — and
with --purge clears the retained message instead (units then keep the campaign until its own end date unless
they are online to see the removal). Both need --vehicle for a campaign published for one vehicle.
Topics and acknowledgements: docs/blackbox.md.
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent import wire
from agent.blackbox.campaign import CampaignError, validate
from agent.errors import WireError

from . import tlsopts

MAX_WINDOW_S = 600.0


@dataclass(frozen=True)
class Topics:
    """The campaign topic layout the agents subscribe to (agent/blackbox/campaigns.topics), in one place."""

    prefix: str
    fleet: str

    @classmethod
    def of(cls, args: argparse.Namespace) -> Topics:
        return cls(args.topic_prefix.rstrip("/"), args.fleet)

    def campaign(self, cid: str, vehicle: str | None = None) -> str:
        """`<prefix>/<fleet>/_campaigns/<id>`, or `<prefix>/<fleet>/<vehicle>/_campaigns/<id>` for one vehicle."""
        return "/".join((self.prefix, self.fleet, *((vehicle,) if vehicle else ()), "_campaigns", cid))

    def listing(self) -> list[str]:
        """Filters for every retained campaign (fleet and per-vehicle) and every unit's retained status."""
        return [self.campaign("+"), self.campaign("+", "+"), f"{self.prefix}/{self.fleet}/+/+/status"]

    def scope(self, topic: str) -> str:
        """The vehicle a campaign topic names, or "fleet"."""
        level = topic.split("/")[-3]
        return level if level != self.fleet else "fleet"


@contextmanager
def connected(host: str, port: int, tls_context: ssl.SSLContext | None = None) -> Iterator[mqtt.Client]:
    """An MQTT v5 client connected with its network loop running; stopped and disconnected on exit."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
    if tls_context is not None:
        c.tls_set_context(tls_context)
    c.connect(host, port)
    c.loop_start()
    try:
        yield c
    finally:
        c.loop_stop()
        c.disconnect()


def _publish(args: argparse.Namespace, topic: str, body: bytes) -> None:
    with connected(args.host, args.port, tlsopts.context(args)) as c:
        c.publish(topic, body, qos=1, retain=True).wait_for_publish(10)


def retained(host: str, port: int, topics: list[str], wait_s: float,
             tls_context: ssl.SSLContext | None = None) -> dict[str, bytes]:
    """Retained messages on these topic filters (collected for wait_s after subscribing)."""
    got: dict[str, bytes] = {}

    def on_message(cl: Any, u: Any, m: Any) -> None:
        if m.retain and m.payload:
            got[m.topic] = bytes(m.payload)

    with connected(host, port, tls_context) as c:
        c.on_message = on_message
        c.subscribe([(t, 1) for t in topics])
        time.sleep(wait_s)
    return got


def cmd_publish(args: argparse.Namespace) -> int:
    try:
        body = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    except OSError as e:
        print(f"campaign not read: {e}", file=sys.stderr)
        return 1
    now = time.time()
    try:
        doc = json.loads(body)
        c = validate(doc, window_s=MAX_WINDOW_S, now_wall=now)
    except (ValueError, RecursionError, CampaignError) as e:
        print(f"campaign refused: {e}", file=sys.stderr)
        return 1
    if c.state(now) == "ended":
        # Valid (it is how `retire` tells offline units), but as a new campaign nothing would ever run it.
        print(f"campaign refused: end: {c.end:.0f} has already passed (to end a running campaign: retire "
              f"{c.id})", file=sys.stderr)
        return 1
    topic = Topics.of(args).campaign(c.id, args.vehicle)
    _publish(args, topic, json.dumps(doc, separators=(",", ":")).encode())
    print(f"published {c.id} (revision {c.revision}) retained on {topic}")
    return 0


def campaigns(args: argparse.Namespace) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    msgs = retained(args.host, args.port, Topics.of(args).listing(), args.wait, tlsopts.context(args))
    docs: dict[str, dict[str, Any]] = {}
    running: dict[str, list[str]] = {}
    for topic, body in sorted(msgs.items()):
        if topic.endswith("/status"):
            try:
                st = wire.decode(body)
            except WireError:
                continue
            if isinstance(st, wire.Status) and st.kind == wire.KIND_BIRTH:
                for cid in st.fields.get("campaigns") or []:
                    running.setdefault(str(cid), []).append(f"{st.vehicle}/{st.device}")
            continue
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):  # whoever else may write there: not ours to crash on
            continue
        if isinstance(doc, dict):
            doc["_topic"] = topic
            docs[topic] = doc
    return docs, running


def cmd_list(args: argparse.Namespace) -> int:
    docs, running = campaigns(args)
    topics = Topics.of(args)
    now = time.time()
    rows = []
    for topic, d in docs.items():
        cid = str(d.get("id"))
        try:
            state = validate({k: v for k, v in d.items() if k != "_topic"}, window_s=MAX_WINDOW_S,
                             now_wall=now).state(now)
        except CampaignError as e:
            state = f"invalid ({e})"
        trig = d.get("trigger") or {}
        scope = topics.scope(topic)
        rows.append({"id": cid, "scope": scope, "state": state, "revision": d.get("revision", 0),
                     "trigger": trig.get("name") or trig.get("family"), "end": d.get("end"),
                     "units_running": running.get(cid, [])})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no campaigns retained for fleet {args.fleet}")
    for r in rows:
        print(f"{r['id']:<24} {r['scope']:<18} {r['state']:<10} rev {r['revision']:<3} trigger {r['trigger']:<20} "
              f"end {r['end']}  running on {len(r['units_running'])} unit(s)")
    return 0


def cmd_retire(args: argparse.Namespace) -> int:
    topic = Topics.of(args).campaign(args.id, args.vehicle)
    got = retained(args.host, args.port, [topic], args.wait, tlsopts.context(args))
    if topic not in got:
        # Checked for --purge too: units run a fleet and a vehicle campaign of one id from their own topics,
        # so clearing the wrong one would report success and stop nothing.
        hint = "" if args.vehicle else " (published for one vehicle? add --vehicle; `list` shows the scope)"
        print(f"no retained campaign {args.id} on {topic}{hint}", file=sys.stderr)
        return 1
    if args.purge:
        _publish(args, topic, b"")
        print(f"cleared the retained campaign {args.id} on {topic}")
        return 0
    doc = json.loads(got[topic])
    now = time.time()
    doc["end"] = round(now, 3)
    doc.pop("start", None)  # a start after the new end would make the document invalid; ended needs none
    doc["revision"] = int(doc.get("revision", 0)) + 1
    _publish(args, topic, json.dumps(doc, separators=(",", ":")).encode())
    print(f"retired {args.id} (revision {doc['revision']}, end now) on {topic}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.ingest campaign", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    tlsopts.add_broker_arguments(ap)
    ap.add_argument("--fleet", required=True, help="the fleet (first topic level after the prefix)")
    tlsopts.add_arguments(ap)
    ap.add_argument("--wait", type=float, default=1.0, metavar="S",
                    help="how long to collect retained messages (default %(default)s s)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("publish", help="validate and publish a campaign document (retained)")
    p.add_argument("file", help="JSON document, or - for stdin")
    p.add_argument("--vehicle", help="publish for this vehicle only (default: the whole fleet)")
    p.set_defaults(fn=cmd_publish)
    p = sub.add_parser("list", help="retained campaigns and which units report running them")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_list)
    p = sub.add_parser("retire", help="end a campaign now (republished with end = now)")
    p.add_argument("id")
    p.add_argument("--vehicle", help="the campaign was published for this vehicle")
    p.add_argument("--purge", action="store_true", help="clear the retained message instead")
    p.set_defaults(fn=cmd_retire)
    args = ap.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
