"""What `icvq status` and `icvq events` can still say when the daemon is down: read from disk, read-only.

Both databases are opened with `mode=ro` URIs, so looking at a stopped car never changes its spool or
history (and works for a user who may read but not write them). The spool's tables are read directly:
keep in step with SCHEMA in agent/spool.py.
"""

from __future__ import annotations

import json
import sqlite3
import time
from typing import Any

import psutil

from .. import __version__, history
from ..spool import ROW_OVERHEAD
from .client import NOT_RUNNING, Context, Unavailable, running_with


def spool_summary(path: str) -> dict[str, Any]:
    out: dict[str, Any] = {"path": path}
    try:
        db, note = history.open_ro(path)
    except FileNotFoundError:
        return {**out, "error": "no spool file"}
    except (OSError, sqlite3.Error) as e:
        return {**out, "error": f"cannot open: {e}"}
    try:
        n, b, oldest, newest = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0), MIN(wall_ms), MAX(wall_ms) FROM records").fetchone()
        nb, bb, oldest_b = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0), MIN(created_ms) FROM batches").fetchone()
        meta = dict(db.execute("SELECT k, v FROM meta").fetchall())
    except sqlite3.Error as e:
        return {**out, "error": f"cannot read: {e}"}
    finally:
        db.close()
    cands = [x for x in (oldest, oldest_b) if x is not None]
    return {**out, "records": n, "batches": nb, "bytes": b + bb + (n + nb) * ROW_OVERHEAD,
            "oldest_wall_ms": min(cands) if cands else None, "newest_wall_ms": newest,
            "drops": json.loads(meta.get("drops", "{}")), "sid": int(meta["sid"]) if "sid" in meta else None,
            "note": note}


def history_summary(path: str) -> dict[str, Any]:
    try:
        db, note = history.open_ro(path)
    except FileNotFoundError:
        return {"path": path, "error": "no history file"}
    except (OSError, sqlite3.Error) as e:
        return {"path": path, "error": f"cannot open: {e}"}
    try:
        return {"path": path, **history.summary(db), "note": note}
    except sqlite3.Error as e:
        return {"path": path, "error": f"cannot read: {e}"}
    finally:
        db.close()


def owner(pid: int | None) -> dict[str, Any] | None:
    """The process that owns this config's socket (never every icvq-agent on the host: another one may serve
    another config)."""
    if pid is None:
        return None
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            return {"pid": pid, "name": p.name(), "state": p.status(), "started": p.create_time()}
    except psutil.Error as e:
        return {"pid": pid, "error": type(e).__name__}


def status(ctx: Context, why: Unavailable) -> dict[str, Any]:
    """`agent` says why the daemon was not asked (not_running, hung, no_permission); `running` is false
    only when nothing listens, null when a process may be there (hung) or we may not ask."""
    st: dict[str, Any] = {"agent": why.state, "running": False if why.state == NOT_RUNNING else None,
                          "reason": str(why), "pid": why.pid, "owner": owner(why.pid), "verdict": None,
                          "now": time.time(), "cli_version": __version__,
                          "config": {"path": ctx.config_path}, "socket": ctx.socket}
    if why.state == NOT_RUNNING:
        pids = running_with(ctx.config_path)
        if pids and ctx.cfg is None:
            # We do not know its socket: the config cannot be read, and the agent's fds not either (we are not
            # root or its user). It may well serve a socket; say so instead of "without its control socket".
            st["reason"] += (f"; but pid {', '.join(map(str, pids))} runs with this config, whose socket is "
                             "unknown while the config cannot be read: fix the config, or give --socket "
                             "(sudo icvq finds it)")
            st["same_config"] = pids
        elif pids:
            st["reason"] += (f"; but pid {', '.join(map(str, pids))} runs with this config without its control "
                             "socket (its log says why)")
            st["same_config"] = pids
    cfg = ctx.cfg
    if cfg is None:
        st["config"]["error"] = ctx.config_error
        return st
    st["config"].update(digest=cfg.digest, sources=list(cfg.sources))
    st["vehicle"] = {"id": cfg.vehicle.id, "device": cfg.vehicle.device, "fleet": cfg.vehicle.fleet}
    st["spool"] = {**spool_summary(cfg.spool.path), "max_bytes": int(cfg.spool.max_mib * 2**20)}
    if history.enabled(cfg.history):
        st["history"] = {"enabled": True, **history_summary(cfg.history.path)}
    else:
        st["history"] = {"enabled": False}
    from ..blackbox.wiring import stored_status

    st["blackbox"] = stored_status(cfg, st["now"])
    return st
