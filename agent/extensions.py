"""Hooks for what hangs off the daemon outside the data path: the control socket and the local history.

Kept apart from daemon.py so the field-engineer path can grow without touching the wiring. Neither part
may stop the agent from collecting: when the history file or the socket cannot be set up, we log it and
run without (`icvq status` then falls back to reading the spool from disk).
"""

from __future__ import annotations

import atexit
import logging
import sqlite3
from typing import TYPE_CHECKING

from . import history
from .control import ControlServer
from .dataclass_shared import dataclass

if TYPE_CHECKING:
    from .daemonview import DaemonView

log = logging.getLogger("icvq.agent")


@dataclass
class Extensions:
    history: history.History | None
    control: ControlServer | None


def start(daemon: DaemonView) -> Extensions:
    cfg = daemon.cfg
    hist: history.History | None = None
    if history.enabled(cfg.history):
        try:
            hist = history.History(cfg.history)
            hist.open()
        except (sqlite3.Error, OSError) as e:
            log.error("local history %s unavailable (%s); `icvq events` will be empty", cfg.history.path, e)
            hist = None
        else:
            daemon.pipeline.observers.append(hist)
            # Closed at exit, not in stop(): pipeline.stop() runs after stop() and commits the last
            # records (episode ends emitted by stopping probes); those belong in the history too.
            atexit.register(hist.close)
    return Extensions(hist, _start_control(daemon, hist))


def _start_control(daemon: DaemonView, hist: history.History | None) -> ControlServer | None:
    control = ControlServer(daemon, hist)
    try:
        control.start()
    except OSError as e:
        log.error("control socket %s unavailable (%s); `icvq status` will read from disk",
                  daemon.cfg.control.socket, e)
        return None
    daemon.pipeline.observers.append(control.observe)
    return control


def stop(daemon: DaemonView) -> None:
    ext = daemon.control
    if ext is None or ext.control is None:
        return
    try:
        daemon.pipeline.observers.remove(ext.control.observe)
    except ValueError:
        pass
    ext.control.stop()
