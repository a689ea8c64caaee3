"""Issue 13: first PUBACK after the *link* comes back (the broker never went away), with the way-back wake-ups
(agent/wayback.py) and without them, in the same run.

Topology (root only: network namespaces). The agent runs in-process, but its threads and sockets live in a
network namespace of their own — "the car": loopback and one veth, no default route, like a car whose only way
out is its modem. The other end of the veth is in the bench's namespace with a real mosquitto listening on it
(and on loopback, for the subscriber that keeps the broker's "matching subscribers" true). The agent reaches
the broker at a non-loopback address, so the bench sets `uplink.allow_plaintext = true`. An outage is the car's
veth set down: the kernel drops the car's route (new connects fail at once with ENETUNREACH, the established TCP
stalls) and rtnetlink in the car's namespace reports the link down and, later, up and RUNNING.

Scenarios, each over N trials (an event is queued during every outage and timed from "link up" — just before
`ip link set up` runs — to the first PUBACK of a batch):
- noticed: keepalive 5 s (the minimum), so MQTT keep-alive notices the dead link within about 2 x 5 s (paho
  closes when a PINGREQ goes unanswered for a keep-alive period); the bench waits until the uplink reports
  disconnected, then 2-6 s more, so the uplink is in its reconnect wait when the link returns;
- not noticed: the default keepalive 60 s and outages of 3-20 s (a tunnel): the connection outlives the
  outage, the event was written into a TCP socket with no route and waits behind TCP's retransmission timer,
  which doubled through the outage, unless the way-back news ends the stalled connection (agent/wayback.py).
Each with the wake-ups on, and off: the uplink's WayBack rebuilt without its netlink socket (no link probe
runs here, so nothing nudges it) — the baseline, in the same run.

Hand-written because nothing here should depend on pyroute2: `ip` does the plumbing, libc's setns(2) moves
the thread that builds the daemon (and so every thread and socket it creates) into the car's namespace.

`python -m tools.bench.linkback [--quick]`
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.config import load
from agent.daemon import Daemon
from agent.wayback import WayBack
from tools.bench.lean import Acks, Subscriber, _pct
from tools.bench.peer import icvq_conf
from tools.localbroker import Mosquitto, free_port

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@dataclass
class Car:
    """The car's namespace and its one veth; `host_addr` is the broker's side."""

    ns: str = field(default_factory=lambda: f"icvq-car{os.getpid()}")
    car_if: str = field(default_factory=lambda: f"lbc{os.getpid()}")
    host_if: str = field(default_factory=lambda: f"lbh{os.getpid()}")
    net: int = field(default_factory=lambda: 16 + os.getpid() % 200)

    @property
    def host_addr(self) -> str:
        return f"10.213.{self.net}.1"

    def create(self) -> Car:
        _ip("netns", "add", self.ns)
        _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.car_if, "netns", self.ns)
        _ip("addr", "add", f"{self.host_addr}/30", "dev", self.host_if)
        _ip("link", "set", self.host_if, "up")
        _ip("-n", self.ns, "addr", "add", f"10.213.{self.net}.2/30", "dev", self.car_if)
        _ip("-n", self.ns, "link", "set", "lo", "up")
        _ip("-n", self.ns, "link", "set", self.car_if, "up")
        return self

    def link(self, up: bool) -> None:
        _ip("-n", self.ns, "link", "set", self.car_if, "up" if up else "down")

    def destroy(self) -> None:
        # The veth goes with the namespace, unless a socket of a daemon that did not stop still holds it.
        _ip("netns", "del", self.ns, check=False)
        _ip("link", "del", self.host_if, check=False)

    def broker(self, data_dir: Path) -> Mosquitto:
        """A mosquitto on the host's end of the veth (and loopback, for the subscriber), started."""
        port = free_port()
        return Mosquitto(data_dir, port=port, persistent=False,
                         extra_conf=f"listener {port} 127.0.0.1\nlistener {port} {self.host_addr}\n"
                                    "allow_anonymous true\n").start()

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """This thread in the car's namespace; threads it starts stay there, sockets it opens belong there."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        there = os.open(f"/run/netns/{self.ns}", os.O_RDONLY)
        try:
            _setns(there)
            yield
        finally:
            _setns(home)
            os.close(home)
            os.close(there)


def _conf(tmp: Path, car: Car, port: int, keepalive_s: int) -> Path:
    conf = icvq_conf(tmp, port)
    text = conf.read_text()
    for pat, new in [(r'host = "127\.0\.0\.1"', f'host = "{car.host_addr}"'),
                     (r"allow_plaintext = false", "allow_plaintext = true"),
                     (r"keepalive_s = 60 ", f"keepalive_s = {keepalive_s} ")]:
        text, n = re.subn(pat, new, text, count=1)
        if n != 1:
            raise RuntimeError(f"config/agent.toml changed: {pat!r} not found")
    conf.write_text(text)
    return conf


def _daemon(car: Car, conf: Path, wakeups: bool) -> Daemon:
    with car.inside():
        d = Daemon(load(conf, lean=True), str(conf))
        if not wakeups:
            # The same uplink without its rtnetlink socket: only nudges (none here) and its timer end a wait.
            d.uplink._wayback.close()
            d.uplink._wayback = WayBack(netlink=False)
        d.start()
    return d


def _until(cond: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def _trigger(way_back: str, was_connected: bool) -> str:
    """What ended a trial's outage, from the uplink's last_way_back (reset at link up)."""
    if not way_back:
        return "the old connection resumed" if was_connected else "`reconnect_probe_s` timer"
    label = ("rtnetlink: interface up" if way_back.endswith(" is up") else
             "rtnetlink: new address" if "address" in way_back else way_back)
    return f"{label} (the stalled connection ended)" if was_connected else label


def scenario(tmp: Path, car: Car, port: int, trials: int, *, wakeups: bool, noticed: bool,
             seed: int) -> dict[str, Any]:
    d = _daemon(car, _conf(tmp, car, port, keepalive_s=5 if noticed else 60), wakeups)
    delays: list[float] = []
    noticed_after: list[float] = []
    triggers: dict[str, int] = {}
    rnd = random.Random(seed)
    try:
        acks = Acks(d)
        if not _until(lambda: d.uplink.connected, 30):
            raise RuntimeError(f"the agent did not connect to {car.host_addr}:{port}: {d.uplink.last_error}")
        time.sleep(3.0)  # start-up traffic out of the way
        for i in range(trials):
            t_down = time.monotonic()
            car.link(up=False)
            time.sleep(rnd.uniform(1.0, 3.0) if noticed else 1.0)
            d.pipeline.intake(d.rec.event("bench.during_link_outage", {"trial": i}))
            if noticed:
                if not _until(lambda: not d.uplink.connected, 40):
                    raise RuntimeError("the uplink did not notice the link going down within 40 s")
                noticed_after.append(time.monotonic() - t_down)
                time.sleep(rnd.uniform(2.0, 6.0))
            else:
                time.sleep(rnd.uniform(2.0, 19.0))
            was_connected = d.uplink.connected
            d.uplink.last_way_back = ""
            t_up = time.monotonic()
            car.link(up=True)
            a = acks.first_after(t_up, 120.0)
            delays.append((a - t_up) if a is not None else float("inf"))
            why = _trigger(d.uplink.last_way_back, was_connected)
            triggers[why] = triggers.get(why, 0) + 1
            _until(lambda: d.uplink.connected, 30)
            time.sleep(rnd.uniform(1.0, 3.0))
    finally:
        d.stop()
    res: dict[str, Any] = {"trials": trials, "p50_s": _pct(delays, 50), "p95_s": _pct(delays, 95),
                           "max_s": max(delays), "mean_s": statistics.mean(delays), "triggers": triggers}
    if noticed_after:
        res["noticed_p50_s"], res["noticed_max_s"] = _pct(noticed_after, 50), max(noticed_after)
    return res


def markdown(runs: list[tuple[str, dict[str, Any]]], cmd: str, minutes: float) -> str:
    rows = []
    for name, r in runs:
        why = ", ".join(f"{k} {v}" for k, v in sorted(r["triggers"].items(), key=lambda kv: -kv[1]))
        rows.append(f"| {name} | {r['p50_s']:.2f} / {r['p95_s']:.2f} / {r['max_s']:.2f} s | {why} |")
    res = dict(runs)
    on, off = res["noticed, wake-ups on"], res["noticed, wake-ups off"]
    s_on, s_off = res["not noticed, wake-ups on"], res["not noticed, wake-ups off"]
    table = "\n".join(rows)
    return f"""### Link back → first PUBACK (tools/bench/linkback.py)

Command: `{cmd}` (root: network namespaces; this machine: {os.cpu_count()} cores, Python
{sys.version.split()[0]}; {minutes:.1f} minutes). The agent runs in-process but in its own network namespace,
behind one veth and no other route, like a car whose only way out is its modem; mosquitto listens on the veth's
far end (plaintext, so `uplink.allow_plaintext = true`). An outage is the car's veth set down, with an event
queued during it; timed from `ip link set up` to that event's PUBACK, {on['trials']} trials per row. "Noticed":
keepalive 5 s (the minimum), so MQTT keep-alive notices the dead link (p50 {on['noticed_p50_s']:.1f} s, max
{on['noticed_max_s']:.1f} s after it went down; the bench waits for the uplink to say disconnected, then 2–6 s
more, so it is in its reconnect wait). "Not noticed": the default keepalive 60 s and outages of 3–20 s, shorter
than keep-alive can notice. "Wake-ups off": the same uplink without its rtnetlink socket (and no link probe),
in the same run.

| outage | link up → PUBACK, p50 / p95 / max | what ended the wait (trials) |
|---|---|---|
{table}

p95 wake-ups off / on: noticed {_ratio(off, on)}, not noticed {_ratio(s_off, s_on)}.
"""


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> str:
    return f"{a['p95_s'] / b['p95_s']:.0f}×" if b["p95_s"] > 0 else "∞"


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.bench.linkback", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 trials per scenario instead of 20 (smoke run)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("tools.bench.linkback needs root (network namespaces)", file=sys.stderr)
        return 2
    trials = 4 if args.quick else 20
    # Ctrl-C and SIGTERM both unwind through the finally below, which removes the namespace and the veth.
    old_term = signal.signal(signal.SIGTERM, _interrupt)
    car = Car()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        broker = None
        sub = None
        try:
            car.create()
            broker = car.broker(tmp / "broker")
            sub = Subscriber(broker.port)
            runs = []
            for noticed in (True, False):
                for wakeups in (True, False):
                    name = f"{'noticed' if noticed else 'not noticed'}, wake-ups {'on' if wakeups else 'off'}"
                    runs.append((name, scenario(tmp / name.replace(" ", "").replace(",", "-"), car, broker.port, trials,
                                                wakeups=wakeups, noticed=noticed, seed=13 if noticed else 31)))
        finally:
            if sub is not None:
                sub.stop()
            if broker is not None:
                broker.stop()
            car.destroy()
            signal.signal(signal.SIGTERM, old_term)
    cmd = "python -m tools.bench.linkback" + (" --quick" if args.quick else "")
    print(markdown(runs, cmd, (time.monotonic() - t0) / 60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
