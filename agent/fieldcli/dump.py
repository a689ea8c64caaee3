"""`icvq dump` (one tar.gz of everything, to a file or stdout) and `icvq inspect` (read one back)."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from .. import __version__, bundle, history
from ..control import json_default
from ..inventory import inventory
from . import collect, events
from . import status as status_cmd
from .client import EX_DATAERR, EX_NOINPUT, EXIT_USAGE, LABELS, Context, context
from .fmt import isatty, size
from .redact import Scrubber, effective_config

MAX_HISTORY = 100_000


def _progress(on: bool) -> Callable[[str], None]:
    def say(msg: str) -> None:
        if on:
            print(f"\r\033[Kdump: {msg}", end="", file=sys.stderr, flush=True)
    return say


def _history(ctx: Context) -> tuple[list[dict[str, Any]], str]:
    rows: list[dict[str, Any]] = []
    before: int | None = None
    src = ""
    while len(rows) < MAX_HISTORY:
        res = events.fetch(ctx, history.Query(limit=history.MAX_QUERY, before_id=before))
        src = "from the agent" if res["running"] else f"read-only from {res['source']}"
        rows += res["events"]
        if not res["more"] or not res["events"]:
            break
        before = res["events"][-1]["id"]
    return rows[::-1], f"{len(rows)} events {src}"


def write(ctx: Context, out: BinaryIO, log_file: str | None, say: Callable[[str], None]) -> dict[str, Any]:
    say("status")
    st, _ = status_cmd.fetch(ctx)
    v = st.get("vehicle") or {}
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    prefix = f"icvq-{v.get('id', 'unknown')}-{v.get('device', 'unknown')}-{stamp}"
    scrub = Scrubber()
    cfg = ctx.cfg
    conf: dict[str, Any] | None = effective_config(cfg, scrub) if cfg else None
    w = bundle.Writer(out, prefix, scrub)

    def step(name: str, fn: Callable[[], None]) -> None:
        say(name)
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - one broken collector must not cost the whole bundle
            w.omit(name, f"failed: {type(e).__name__}: {e}")

    running = st.get("agent") == "running"
    agent_says = "running" if running else f"{LABELS.get(st.get('agent', ''), '?')}: {st.get('reason')}"
    w.add_json("status.json", st, "from the agent" if running else f"agent {agent_says}; read from disk")

    def hist() -> None:
        rows, how = _history(ctx)
        w.add("history.jsonl", b"".join(json.dumps(r, default=json_default).encode() + b"\n" for r in rows), how)

    def spool() -> None:
        w.add_json("spool.json", st.get("spool") or {}, "spool summary (counts, sizes, drops; no payloads)")

    def config() -> None:
        if cfg is None or conf is None:
            w.omit("config.json", f"config not readable: {ctx.config_error}")
            return
        digest = (st.get("config") or {}).get("digest") if running else None
        w.add_json("config.json", {"path": ctx.config_path, "sources": list(cfg.sources), "digest": cfg.digest,
                                   "running_digest": digest, "config": conf},
                   "effective config from the files, secrets redacted")

    def log() -> None:
        data, how = collect.agent_log(log_file)
        if data is None:
            w.omit("agent.log", how)
        else:
            w.add("agent.log", data, how)

    def system() -> None:
        rel = collect.os_release()
        if rel is not None:
            w.add("system/os-release", rel, "/etc/os-release")
        w.add_json("system/uname.json", collect.uname(), "uname")
        w.add_json("system/host.json", collect.host_summary(cfg.spool.path.rsplit("/", 1)[0] if cfg else None),
                   "psutil: load, memory, disks, top processes by RSS (names only)")
        kern, how = collect.kernel_log()
        if kern is None:
            w.omit("system/kernel-drm-can.log", how)
        else:
            w.add("system/kernel-drm-can.log", kern, how)
        links, how = collect.can_links()
        if links is None:
            w.omit("system/can-links.json", how)
        else:
            w.add_json("system/can-links.json", links, how)

    def inv() -> None:
        w.add_json("inventory.json", inventory(cfg.agent.components if cfg else {}), "software inventory")

    for name, fn in (("history.jsonl", hist), ("spool.json", spool), ("config.json", config),
                     ("agent.log", log), ("system", system), ("inventory.json", inv)):
        step(name, fn)
    manifest = {"format": bundle.FORMAT, "created": w.now, "tool": f"icvq {__version__}",
                "host": os.uname().nodename, "user": getpass.getuser(), "vehicle": v,
                "agent": agent_says,
                "members": dict(w.members), "omitted": dict(w.omitted), "notes": scrub.notes}
    w.add_json("manifest.json", manifest, "this list")
    w.close()
    say("done")
    return manifest


def cmd_dump(args: argparse.Namespace) -> int:
    ctx = context(args)
    to_stdout = args.output == "-"
    if to_stdout and isatty(sys.stdout):
        print("icvq: refusing to write a tar.gz to a terminal: redirect it (icvq dump -o - > car.tgz)",
              file=sys.stderr)
        return EXIT_USAGE
    say = _progress(isatty(sys.stderr))
    log_file = args.log_file or os.environ.get("ICVQ_LOG_FILE")
    if to_stdout:
        manifest = write(ctx, sys.stdout.buffer, log_file, say)
        sys.stdout.buffer.flush()
        where = "stdout"
    else:
        path = args.output or _default_name(ctx)
        tmp = f"{path}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # vehicle data: owner only
        os.fchmod(fd, 0o600)  # also when .part was left by an earlier run with another mode
        try:
            with os.fdopen(fd, "wb") as f:
                manifest = write(ctx, f, log_file, say)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        where = f"{path} ({size(os.path.getsize(path))})"
    if isatty(sys.stderr):
        print(file=sys.stderr)
    # What went in is not progress: always say it, on stderr when stdout carries the bundle.
    lines = [f"bundle written to {where}; agent {manifest['agent']}"]
    lines += [f"  + {n}: {m['source']}" for n, m in manifest["members"].items() if m["source"]]
    lines += [f"  - {n}: {why}" for n, why in manifest["omitted"].items()]
    lines += [f"  ! {n}" for n in manifest["notes"]]
    print("\n".join(lines), file=sys.stderr if to_stdout else sys.stdout)
    return 0


def _default_name(ctx: Context) -> str:
    v = ctx.cfg.vehicle if ctx.cfg else None
    who = f"{v.id}-{v.device}" if v else "unknown"
    return f"icvq-{who}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.tar.gz"


def cmd_inspect(args: argparse.Namespace) -> int:
    try:
        if args.bundle == "-":
            prefix, members = bundle.read(sys.stdin.buffer)
        else:
            with open(args.bundle, "rb") as f:
                prefix, members = bundle.read(f)
    except OSError as e:
        print(f"icvq: {args.bundle}: {e.strerror or e}", file=sys.stderr)
        return EX_NOINPUT
    except bundle.BadBundle as e:
        print(f"icvq: {args.bundle}: {e}", file=sys.stderr)
        return EX_DATAERR
    if args.show:
        data = members.get(args.show)
        if data is None:
            print(f"icvq: no {args.show} in the bundle; members: {', '.join(sorted(members))}", file=sys.stderr)
            return 1
        sys.stdout.buffer.write(data)
        return 0
    s = bundle.summarise(prefix, members)
    print(json.dumps(s, indent=2, default=json_default) if args.json else bundle.render(s))
    return 0


def register(sub: Any, handlers: dict[str, Any], common: Any) -> None:
    p = sub.add_parser("dump", help="one tar.gz with status, history, config (redacted), logs and a system "
                       "snapshot; -o - streams it to stdout")
    common(p, json_flag=False)
    p.add_argument("-o", "--output", help="file to write (default icvq-<vehicle>-<device>-<time>.tar.gz), - for stdout")
    p.add_argument("--log-file", help="agent log file to include when the journal has none (also $ICVQ_LOG_FILE)")
    handlers["dump"] = cmd_dump

    p = sub.add_parser("inspect", help="summarise a bundle from `icvq dump` (offline, e.g. on a laptop)")
    p.add_argument("bundle", help="the .tar.gz, or - for stdin")
    p.add_argument("--json", action="store_true", help="the summary as JSON on stdout")
    p.add_argument("--show", metavar="MEMBER", help="print one member, e.g. agent.log or status.json")
    handlers["inspect"] = cmd_inspect
