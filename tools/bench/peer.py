"""icvq side by side with collectd (issue 13): the same system metrics every 10 s, each agent publishing over
MQTT QoS 1 to its own local mosquitto, measured in the same run.

collectd 5.12 is Debian's `collectd-core` (C; its `mqtt` write plugin, libmosquitto). It is installed by
`tools/deps/apt-bench.txt`; this benchmark fails loudly when it is missing. Both run with their shipped
defaults apart from where they publish: icvq with the documented default config (system probe, 10 s,
`batch_linger_s` 300 s, keepalive 60 s, zlib with the v2 preset dictionary); collectd with cpu (aggregated
percentages), load, memory, df (one mount), processes and uptime at Interval 10, MQTT QoS 1, keepalive 60 s.

Per agent: MQTT PUBLISH bytes (fixed header + topic + properties + payload, as the subscriber sees them,
with the topic-alias saving counted from the agent's socket), values carried, TCP+IP bytes at the agent's
socket (`ss` counters, 52 B of headers a segment), CPU seconds, context switches (wake-ups), VmRSS and PSS.

`python -m tools.bench.peer [--minutes N] [--quick]`
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from agent import wire
from tools.bench import _procstat as procstat
from tools.localbroker import Mosquitto

REPO = Path(__file__).resolve().parents[2]
DAY_S = 8 * 3600
MB = 1_000_000


class Counter:
    """Subscribes to everything on one broker; counts messages, PUBLISH bytes and values."""

    def __init__(self, port: int, kind: str) -> None:
        self.kind = kind
        self.lock = threading.Lock()
        self.messages = 0
        self.publish_bytes = 0
        self.values = 0
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"count-{kind}", protocol=MQTTProtocolVersion.MQTTv5)
        self.c.on_connect = lambda c, u, f, rc, p: c.subscribe("#", qos=1)
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        payload = bytes(msg.payload)
        if self.kind == "icvq":
            try:
                obj = wire.decode(payload)
            except Exception:  # noqa: BLE001 - counted as nothing
                return
            if not isinstance(obj, wire.Batch):
                return  # birth/death: once per connection, not per value
            values = sum(len(r.data) if isinstance(r.data, dict) else 1 for r in obj.records)
        else:
            values = max(0, payload.count(b":"))  # "epoch:v1[:v2...]"
        # PUBLISH as the agent sent it: fixed header (1 + remaining-length bytes), topic (2 + len), packet id
        # (2), properties (1 + what the agent set), payload. The broker re-adds the aliased topic for us, so
        # the agent's own bytes are taken from its socket below; this is the size of the message itself.
        body = 2 + len(msg.topic) + 2 + 1 + len(payload)
        size = 1 + (1 if body < 128 else 2 if body < 16384 else 3) + body
        with self.lock:
            self.messages += 1
            self.publish_bytes += size
            self.values += values

    def snapshot(self) -> tuple[int, int, int]:
        with self.lock:
            return self.messages, self.publish_bytes, self.values

    def stop(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def collectd_conf(tmp: Path, port: int) -> Path:
    conf = tmp / "collectd.conf"
    conf.write_text(f"""Hostname "VIN00000000000001"
FQDNLookup false
BaseDir "{tmp}"
PIDFile "{tmp}/collectd.pid"
PluginDir "/usr/lib/collectd"
TypesDB "/usr/share/collectd/types.db"
Interval 10
LoadPlugin logfile
<Plugin logfile>
  LogLevel warning
  File "{tmp}/collectd.log"
</Plugin>
LoadPlugin cpu
<Plugin cpu>
  ReportByCpu false
  ReportByState true
  ValuesPercentage true
</Plugin>
LoadPlugin load
LoadPlugin memory
LoadPlugin df
<Plugin df>
  MountPoint "/"
  IgnoreSelected false
</Plugin>
LoadPlugin processes
LoadPlugin uptime
LoadPlugin mqtt
<Plugin mqtt>
  <Publish "bench">
    Host "127.0.0.1"
    Port {port}
    ClientId "collectd-VIN00000000000001"
    QoS 1
    Prefix "collectd"
    Retain false
    KeepAlive 60
  </Publish>
</Plugin>
""")
    return conf


def icvq_conf(tmp: Path, port: int) -> Path:
    """The documented default config (config/agent.toml) with only identity, broker and paths changed."""
    text = (REPO / "config" / "agent.toml").read_text()
    for old, new in [('host = "localhost"', 'host = "127.0.0.1"'), ("port = 1883 ", f"port = {port} "),
                     ('"/var/lib/icvq/spool.db"', f'"{tmp}/spool.db"'),
                     ('"/var/lib/icvq/history.db"', f'"{tmp}/history.db"'),
                     ('"/run/icvq/control.sock"', f'"{tmp}/control.sock"'), ('group = "icvq"', 'group = ""')]:
        if old not in text:
            raise RuntimeError(f"config/agent.toml changed: {old!r} not found")
        text = text.replace(old, new, 1)
    tmp.mkdir(parents=True, exist_ok=True)
    conf = tmp / "agent.toml"
    conf.write_text(text)
    return conf


def run(minutes: float, settle_s: float) -> dict[str, Any]:
    exe = shutil.which("collectd") or "/usr/sbin/collectd"
    if not Path(exe).exists():
        raise RuntimeError("collectd is not installed: apt-get install collectd-core (tools/deps/apt-bench.txt)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        b_icvq = Mosquitto(tmp / "b1", persistent=False).start()
        b_cd = Mosquitto(tmp / "b2", persistent=False).start()
        procs: list[subprocess.Popen[bytes]] = []
        counters: list[Counter] = []
        try:
            counters = [Counter(b_icvq.port, "icvq"), Counter(b_cd.port, "collectd")]
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            (tmp / "ic").mkdir()
            (tmp / "cd").mkdir()
            log = (tmp / "agent.log").open("ab")
            procs.append(subprocess.Popen([sys.executable, "-m", "agent", "--config", str(icvq_conf(tmp / "ic", b_icvq.port))],
                                          cwd=REPO, env=env, stdout=log, stderr=log))
            procs.append(subprocess.Popen([exe, "-f", "-C", str(collectd_conf(tmp / "cd", b_cd.port))],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(settle_s)
            for p in procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args!r} exited with {p.returncode} (see {tmp})")
            ports = [b_icvq.port, b_cd.port]
            t0 = time.monotonic()
            s0 = [procstat.sample(p.pid) for p in procs]
            n0 = [procstat.tcp_to(port) for port in ports]
            c0 = [c.snapshot() for c in counters]
            time.sleep(minutes * 60)
            wall = time.monotonic() - t0
            s1 = [procstat.sample(p.pid) for p in procs]
            n1 = [procstat.tcp_to(port) for port in ports]
            c1 = [c.snapshot() for c in counters]
        finally:
            for p in procs:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
            for c in counters:
                c.stop()
            b_icvq.stop()
            b_cd.stop()
    res: dict[str, Any] = {"minutes": wall / 60}
    for i, name in enumerate(("icvq", "collectd")):
        msgs, pub, values = (c1[i][k] - c0[i][k] for k in range(3))
        net = n1[i].minus(n0[i])
        res[name] = {"messages": msgs, "values": values, "publish_bytes": pub,
                     "publish_per_value": pub / max(values, 1), "wire_bytes": net.wire_bytes,
                     "payload_bytes_out": net.bytes_out, "segments": net.segs_out + net.segs_in,
                     "wire_per_value": net.wire_bytes / max(values, 1),
                     "wire_per_day_mb": net.wire_bytes / wall * DAY_S / MB,
                     "cpu_s_per_h": (s1[i].cpu_s - s0[i].cpu_s) / wall * 3600,
                     "wakeups_per_s": (s1[i].switches - s0[i].switches) / wall,
                     "rss_mib": s1[i].rss_mib, "pss_mib": s1[i].pss_mib}
    return res


def markdown(r: dict[str, Any], cmd: str) -> str:
    a, b = r["icvq"], r["collectd"]

    def row(label: str, key: str, fmt: str, goal: str = "") -> str:
        ratio = a[key] / b[key] if b[key] else float("nan")
        return f"| {label} | {a[key]:{fmt}} | {b[key]:{fmt}} | {ratio:.2f} | {goal} |"

    return f"""## Issue 13: icvq beside collectd (live traffic, default config)

Command: `{cmd}` ({r['minutes']:.1f} minutes measured after start-up; one icvq and one collectd 5.12, each to its
own mosquitto on loopback; this machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}).

| measure | icvq | collectd | ratio icvq/collectd | goal |
|---|---|---|---|---|
| values carried | {a['values']:,} | {b['values']:,} | | |
| MQTT messages | {a['messages']:,} | {b['messages']:,} | | |
{row("MQTT PUBLISH bytes per value", "publish_per_value", ".1f")}
{row("TCP+IP bytes per value (at the socket)", "wire_per_value", ".1f", "≤ 0.25")}
{row("TCP+IP per 8 h day, MB", "wire_per_day_mb", ".3f", "icvq ≤ 0.5 MB")}
{row("CPU seconds per hour", "cpu_s_per_h", ".2f", "≤ 1.5")}
{row("wake-ups per second (context switches, all threads)", "wakeups_per_s", ".2f", "icvq ≤ 3")}
{row("VmRSS, MiB", "rss_mib", ".1f")}
{row("PSS, MiB", "pss_mib", ".1f")}

TCP+IP bytes are the kernel's per-connection counters (`ss -tin`: bytes both ways plus 52 B of IPv4+TCP
headers per segment, ACKs and keep-alive pings included). TLS is excluded: it would add ~29 B per TLS record
(AES-GCM) to both, i.e. per icvq batch but per collectd value, plus a handshake per connection. icvq's values
count each metric and each numeric field of its health records; collectd's each value in its `epoch:v…`
payloads. icvq's PUBLISH bytes are the message as delivered (full topic); on its own socket the topic is an
alias after the first batch of a connection.
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.peer", description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="measured window (default 20)")
    ap.add_argument("--quick", action="store_true", help="a 3-minute smoke run (not for the docs)")
    args = ap.parse_args(argv)
    minutes = 3.0 if args.quick else args.minutes
    r = run(minutes, settle_s=15.0)
    cmd = "python -m tools.bench.peer" + (" --quick" if args.quick else f" --minutes {args.minutes:g}")
    print(markdown(r, cmd))
    return 0


if __name__ == "__main__":
    sys.exit(main())
