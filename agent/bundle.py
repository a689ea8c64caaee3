"""Field bundles: everything an engineer takes home from a car, in one tar.gz (docs/field-guide.md).

Layout: `icvq-<vehicle>-<device>-<UTC time>/` holding manifest.json (what is in, what is not and why),
status.json, history.jsonl, spool.json, config.json, agent.log, inventory.json and system/*. Written as a
stream so `ssh car icvq dump -o - > car.tgz` needs no temporary file on the car; every member passes the
secret scrubber first. Read back by `icvq inspect` without extracting anything to disk, with size limits,
because a bundle is a file from somewhere else.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, BinaryIO

from .control import json_default
from .fieldcli import status as status_view
from .fieldcli.fmt import age, fields, kv, size, table, ts

FORMAT = 1
MAX_MEMBER = 64 * 2**20
MAX_MEMBERS = 256


class Writer:
    def __init__(self, out: BinaryIO, prefix: str, scrub: Callable[[bytes], bytes]) -> None:
        self.prefix = prefix
        self.scrub = scrub
        self.now = time.time()
        # No file name in the gzip header: the stream may be stdout.
        self._gz = gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=int(self.now))
        self._tar = tarfile.open(fileobj=self._gz, mode="w|", format=tarfile.PAX_FORMAT)  # noqa: SIM115 - closed in close()
        self.members: dict[str, dict[str, Any]] = {}
        self.omitted: dict[str, str] = {}

    def add(self, name: str, data: bytes, source: str = "") -> None:
        data = self.scrub(data)
        ti = tarfile.TarInfo(f"{self.prefix}/{name}")
        ti.size = len(data)
        ti.mtime = int(self.now)
        ti.mode = 0o644
        self._tar.addfile(ti, io.BytesIO(data))
        self.members[name] = {"bytes": len(data), "source": source}

    def add_json(self, name: str, obj: Any, source: str = "") -> None:
        self.add(name, json.dumps(obj, indent=2, default=json_default).encode() + b"\n", source)

    def omit(self, name: str, reason: str) -> None:
        self.omitted[name] = reason

    def close(self) -> None:
        self._tar.close()
        self._gz.close()


# ------------------------------------------------------------------------------------------- reading
class BadBundle(Exception):
    pass


def read(f: BinaryIO) -> tuple[str, dict[str, bytes]]:
    """(prefix, {member name: bytes}); nothing is extracted, oversized or odd members are skipped."""
    members: dict[str, bytes] = {}
    prefix = ""
    try:
        with tarfile.open(fileobj=f, mode="r|gz") as tar:
            for m in tar:
                if len(members) >= MAX_MEMBERS:
                    break
                if not m.isfile() or m.size > MAX_MEMBER:
                    continue
                head, _, name = m.name.lstrip("./").partition("/")
                prefix = prefix or head
                ex = tar.extractfile(m)
                if ex is not None and name:
                    members[name] = ex.read(MAX_MEMBER)
    except (tarfile.TarError, OSError, EOFError, gzip.BadGzipFile) as e:
        if not members:
            raise BadBundle(f"not an icvq bundle (tar.gz): {e}") from None
    if "manifest.json" not in members and "status.json" not in members:
        raise BadBundle("not an icvq bundle: no manifest.json or status.json inside")
    return prefix, members


def _json(members: dict[str, bytes], name: str) -> Any:
    try:
        return json.loads(members[name])
    except (KeyError, ValueError):
        return None


def summarise(prefix: str, members: dict[str, bytes]) -> dict[str, Any]:
    st = _json(members, "status.json") or {}
    events = []
    for line in members.get("history.jsonl", b"").splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    events.sort(key=lambda e: e.get("t") or 0)
    log = members.get("agent.log", b"").decode(errors="replace").splitlines()
    bad = [ln for ln in log if any(w in ln for w in ("ERROR", "CRITICAL", "Traceback", "WARNING"))]
    kernel = members.get("system/kernel-drm-can.log", b"").decode(errors="replace").splitlines()
    host = _json(members, "system/host.json") or {}
    rel = _os_release(members.get("system/os-release", b""))
    return {
        "bundle": prefix, "manifest": _json(members, "manifest.json") or {},
        "status": st, "verdict": st.get("verdict"),
        "events": {"count": len(events), "oldest": events[0]["t"] if events else None,
                   "newest": events[-1]["t"] if events else None,
                   "top": Counter(e.get("name") for e in events).most_common(10), "recent": events[-15:]},
        "log": {"lines": len(log), "errors": sum("ERROR" in ln or "CRITICAL" in ln for ln in log),
                "warnings": sum("WARNING" in ln for ln in log), "last_bad": bad[-8:]},
        "kernel": {"lines": len(kernel), "last": kernel[-10:]},
        "system": {"os": rel.get("PRETTY_NAME"), "uname": _json(members, "system/uname.json") or {},
                   "uptime_s": host["time"] - host["boot_time"] if host.get("boot_time") else None,
                   "loadavg": host.get("loadavg"), "memory": host.get("memory"), "disks": host.get("disks")},
        "can": [_can(lk) for lk in _json(members, "system/can-links.json") or []],
        "inventory": _json(members, "inventory.json") or {},
        "contents": {n: len(b) for n, b in sorted(members.items())},
    }


def _os_release(data: bytes) -> dict[str, str]:
    out = {}
    for line in data.decode(errors="replace").splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k] = v.strip().strip('"')
    return out


def _can(lk: dict[str, Any]) -> dict[str, Any]:
    info = (lk.get("linkinfo") or {}).get("info_data") or {}
    xst = (lk.get("linkinfo") or {}).get("info_xstats") or {}
    stats = lk.get("stats64") or lk.get("stats") or {}
    rx, tx = stats.get("rx") or {}, stats.get("tx") or {}
    return {"name": lk.get("ifname"), "operstate": lk.get("operstate"), "state": info.get("state"),
            "bitrate": (info.get("bittiming") or {}).get("bitrate"), "berr": info.get("berr_counter"),
            "rx_packets": rx.get("packets"), "tx_packets": tx.get("packets"),
            "rx_errors": rx.get("errors"), "tx_errors": tx.get("errors"), "rx_dropped": rx.get("dropped"),
            "bus_off": xst.get("bus_off"), "restarts": xst.get("restarts")}


def render(s: dict[str, Any]) -> str:
    m = s["manifest"]
    out = [kv([("bundle", f"{s['bundle']} (format {m.get('format', '?')})"),
               ("created", f"{ts(m.get('created'), utc=True)} by {m.get('tool', '?')} on {m.get('host', '?')}"
                           f" as {m.get('user', '?')}")]), ""]
    out.append(status_view.render(s["status"], utc=True) if s["status"] else "no status.json in the bundle")
    ev = s["events"]
    out += ["", f"history: {ev['count']} events"
            + (f", {ts(ev['oldest'], utc=True)} .. {ts(ev['newest'], utc=True)}" if ev["count"] else "")]
    if ev["top"]:
        out.append("most frequent: " + ", ".join(f"{n} x{c}" for n, c in ev["top"]))
        out += ["", table(["TIME (UTC)", "TYPE", "NAME", "FIELDS"],
                          [(ts(e.get("t"), utc=True), e.get("type"), e.get("name"),
                            fields(e.get("fields"), e.get("value"))) for e in ev["recent"]])]
    lg = s["log"]
    src = (m.get("members") or {}).get("agent.log", {}).get("source")
    if src:
        out += ["", f"agent log: {src}; {lg['lines']} lines, {lg['errors']} errors, {lg['warnings']} warnings"]
        out += [f"  {ln}" for ln in lg["last_bad"]]
    else:
        out += ["", f"agent log: not included ({(m.get('omitted') or {}).get('agent.log', '?')})"]
    sy = s["system"]
    u = sy["uname"]
    mem = sy.get("memory") or {}
    out += ["", kv([("system", f"{sy.get('os') or '?'}, kernel {u.get('release', '?')} {u.get('machine', '')}, "
                               f"host {u.get('nodename', '?')}, up {age(sy.get('uptime_s'))}"),
                    ("load", " ".join(f"{x:.2f}" for x in sy.get("loadavg") or [])
                     + f"; memory {mem.get('percent', '?')} % used")])]
    if s["can"]:
        out += ["", table(["CAN", "OPER", "STATE", "BITRATE", "RX", "TX", "RX ERR", "TX ERR", "BUS-OFF",
                           "BERR tx/rx"],
                          [(c["name"], c["operstate"], c["state"], c["bitrate"], c["rx_packets"], c["tx_packets"],
                            c["rx_errors"], c["tx_errors"], c["bus_off"],
                            "/".join(str(v) for v in (c["berr"] or {}).values())) for c in s["can"]])]
    else:
        out += ["", "CAN: no CAN interfaces in the bundle"]
    k = s["kernel"]
    out += ["", f"kernel log: {k['lines']} DRM/display/CAN lines"] + [f"  {ln}" for ln in k["last"]]
    if m.get("omitted"):
        out += ["", "not included:"] + [f"  {n}: {why}" for n, why in sorted(m["omitted"].items())]
    if m.get("notes"):
        out += ["", "notes:"] + [f"  {n}" for n in m["notes"]]
    out += ["", "contents: " + ", ".join(f"{n} ({size(b)})" for n, b in s["contents"].items())]
    return "\n".join(out)
