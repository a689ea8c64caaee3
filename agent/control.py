"""The control socket: a small line-delimited JSON protocol for `icvq` (docs/control-protocol.md).

Everything here is bounded so a slow or hostile local client cannot hurt the data path: one thread per
connection (at most MAX_CLIENTS, at most MAX_TAILS of them streaming), a read timeout for every request,
a maximum line length, a total timeout on every write, and tail subscribers fed through bounded queues
that drop and count. The only code that runs on the pipeline thread is `observe()`: a filter and a
non-blocking put per subscriber. Peers are checked with SO_PEERCRED/SO_PEERGROUPS on accept.

Threads: "control" blocks in accept(); each connection gets a "control-conn" thread. This module holds only the
listener: admission, requests and tails (agent/control_session.py) are imported at the first connection, so an
idle car nobody connects to does not hold them (issue 13: idle RSS, docs/performance.md).
"""

from __future__ import annotations

import errno
import grp
import json
import logging
import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import history
from .private import private_dir
from .records import Record

if TYPE_CHECKING:
    from .control_session import Conn, Subscriber
    from .daemonview import DaemonView

log = logging.getLogger("icvq.control")

PROTOCOL = 1
MAX_LINE = 64 * 1024
MAX_CLIENTS = 16
MAX_TAILS = 8
FIRST_REQUEST_S = 10.0
IDLE_S = 60.0
WRITE_TIMEOUT_S = 5.0
STALLED_WRITE_S = 1.0
TAIL_QUEUE = 2000
HEARTBEAT_S = 5.0
STATUS_CACHE_S = 0.5


def json_default(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, (set, frozenset, tuple)):
        return list(v)
    if hasattr(v, "items"):
        return dict(v.items())
    return str(v)


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=json_default).encode() + b"\n"


class ControlServer:
    def __init__(self, daemon: DaemonView, hist: history.History | None) -> None:
        self.daemon = daemon
        self.path = Path(daemon.cfg.control.socket)
        self.group = daemon.cfg.control.group
        self.history = hist
        self.history_path = str(hist.path) if hist is not None else None
        self.own_uid = os.getuid()
        self.group_gid: int | None = None
        self._listener: socket.socket | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[Conn] = set()                 # agent/control_session.py's, like the two below
        self._subs: tuple[Subscriber, ...] = ()   # replaced, never mutated: observe() reads it lock-free
        self._status_lock = threading.Lock()
        self._status_cache: tuple[float, dict[str, Any]] | None = None
        self._thread: threading.Thread | None = None
        self._last_refusal_log = 0.0
        self.stats = {"accepted": 0, "refused_peer": 0, "refused_busy": 0, "evicted": 0, "bad_requests": 0,
                      "tail_dropped": 0}

    # -------------------------------------------------------------------------------------- lifecycle
    def start(self) -> None:
        if self.group:
            try:
                self.group_gid = grp.getgrnam(self.group).gr_gid
            except KeyError:
                log.warning("control group %r does not exist: only root and uid %d may connect",
                            self.group, self.own_uid)
        self._clear_stale()
        private_dir(self.path.parent)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.bind(str(self.path))
            # Nobody can connect before listen(), so fixing mode and group here leaves no window.
            os.chmod(self.path, 0o660)
            if self.group_gid is not None:
                try:
                    os.chown(self.path, -1, self.group_gid)
                except OSError as e:
                    log.warning("cannot give %s to group %s: %s", self.path, self.group, e.strerror)
            s.listen(16)
            # Blocking accept: stop() shuts the listener down, which wakes accept() on Linux. A 0.5 s timeout
            # to look at the stop flag was two wake-ups a second of an idle agent (issue 13).
            s.settimeout(None)
        except BaseException:
            s.close()
            raise
        self._listener = s
        self._thread = threading.Thread(target=self._accept_loop, name="control", daemon=True)
        self._thread.start()
        log.info("control socket %s (group %s)", self.path, self.group or "-")

    def _clear_stale(self) -> None:
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(errno.EEXIST, f"{self.path} exists and is not a socket; not touching it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(self.path))
        except OSError:
            self.path.unlink()  # left by a crashed agent
            return
        finally:
            probe.close()
        raise OSError(errno.EADDRINUSE, f"another agent is serving {self.path}")

    def stop(self) -> None:
        self._stop.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            c.kill()
        if self._thread:
            self._thread.join(2.0)
        try:
            if self._listener is not None and stat.S_ISSOCK(self.path.lstat().st_mode):
                self.path.unlink()
        except OSError:
            pass

    # ------------------------------------------------------------------------ pipeline thread (cheap)
    def observe(self, records: list[Record]) -> None:
        for sub in self._subs:
            sub.offer(records)

    # ---------------------------------------------------------------------------------------- accept
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.1)  # EMFILE and friends: do not spin
                continue
            try:
                self._admit(sock)
            except Exception:
                log.exception("control: admitting a client failed")
                sock.close()

    def _admit(self, sock: socket.socket) -> None:
        # Admission, requests and tails (agent/control_session.py) are imported at the first connection: an idle
        # car nobody connects to does not hold them (issue 13: idle RSS).
        from . import control_session

        control_session.admit(self, sock)
