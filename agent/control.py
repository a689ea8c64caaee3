"""The control socket: a small line-delimited JSON protocol for `icvq` (docs/control-protocol.md).

Everything here is bounded so a slow or hostile local client cannot hurt the data path: one thread per
connection (at most MAX_CLIENTS, at most MAX_TAILS of them streaming), a read timeout for every request,
a maximum line length, a total timeout on every write, and tail subscribers fed through bounded queues
that drop and count. The only code that runs on the pipeline thread is `observe()`: a filter and a
non-blocking put per subscriber. Peers are checked with SO_PEERCRED/SO_PEERGROUPS on accept.
"""

from __future__ import annotations

import errno
import grp
import json
import logging
import os
import queue
import re
import socket
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import translate
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__, history
from .peercred import Peer, allowed, peer_of
from .private import private_dir
from .records import Kind, Record
from .wire import record_json

if TYPE_CHECKING:
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


class ProtocolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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


# ------------------------------------------------------------------------------------------- tail
@dataclass
class Subscriber:
    match: Callable[[str], Any] | None
    types: frozenset[Kind] | None
    q: queue.Queue[Record] = field(default_factory=lambda: queue.Queue(TAIL_QUEUE))
    dropped: int = 0

    def offer(self, records: list[Record]) -> None:
        for r in records:
            if (self.types is None or r.kind in self.types) and (self.match is None or self.match(r.name)):
                try:
                    self.q.put_nowait(r)
                except queue.Full:
                    self.dropped += 1


def name_matcher(globs: list[str]) -> Callable[[str], Any] | None:
    if not globs:
        return None
    return re.compile("|".join(f"(?:{translate(g)})" for g in globs)).match


# ------------------------------------------------------------------------------------ connections
@dataclass(eq=False)
class Conn:
    sock: socket.socket
    peer: Peer
    state: str = "idle"      # idle (waiting for a request) | busy | send | tail
    since: float = field(default_factory=time.monotonic)

    def set(self, state: str) -> None:
        self.state = state
        self.since = time.monotonic()

    def kill(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class LineReader:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def readline(self, timeout_s: float) -> bytes | None:
        """One line without its newline; None on EOF. Raises ProtocolError on an over-long line."""
        deadline = time.monotonic() + timeout_s
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 1]
                return line
            if len(self.buf) > MAX_LINE:
                raise ProtocolError("line_too_long", f"requests are limited to {MAX_LINE} bytes")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buf += chunk


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
        self._conns: set[Conn] = set()
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
        peer = peer_of(sock)
        if not allowed(peer, self.own_uid, self.group_gid):
            self.stats["refused_peer"] += 1
            now = time.monotonic()
            if now - self._last_refusal_log > 10:
                self._last_refusal_log = now
                log.warning("control: refused %s (not root, uid %d or group %s)", peer, self.own_uid,
                            self.group or "-")
            self._reject(sock, "forbidden", f"uid {peer.uid} may not use the control socket: only root, "
                         f"uid {self.own_uid} and members of group {self.group or '(none)'}")
            return
        with self._lock:
            if len(self._conns) >= MAX_CLIENTS and not self._evict_one():
                self.stats["refused_busy"] += 1
                self._reject(sock, "busy", f"{MAX_CLIENTS} clients connected; try again")
                return
            conn = Conn(sock, peer)
            self._conns.add(conn)
            self.stats["accepted"] += 1
        try:
            threading.Thread(target=self._serve, args=(conn,), name="control-conn", daemon=True).start()
        except RuntimeError:  # no more threads: refuse this one, keep the count right
            with self._lock:
                self._conns.discard(conn)
            self._reject(sock, "busy", "out of threads")

    def _evict_one(self) -> bool:
        """At capacity: drop the connection idle longest, or one stuck writing to a client that never
        reads. A flood of idle connections then cannot lock out an engineer."""
        now = time.monotonic()
        cands = [c for c in self._conns
                 if c.state == "idle" or (c.state == "send" and now - c.since > STALLED_WRITE_S)]
        if not cands:
            return False
        victim = min(cands, key=lambda c: c.since)
        self._conns.discard(victim)
        victim.kill()
        self.stats["evicted"] += 1
        return True

    @staticmethod
    def _reject(sock: socket.socket, code: str, message: str) -> None:
        try:
            sock.setblocking(False)
            sock.send(encode({"ok": False, "v": PROTOCOL, "error": code, "message": message}))
        except OSError:
            pass
        finally:
            sock.close()

    # ----------------------------------------------------------------------------------- connections
    def _serve(self, conn: Conn) -> None:
        reader = LineReader(conn.sock)
        first = True
        try:
            while not self._stop.is_set():
                conn.set("idle")
                try:
                    line = reader.readline(FIRST_REQUEST_S if first else IDLE_S)
                except ProtocolError as e:
                    self.stats["bad_requests"] += 1
                    self._send(conn, {"ok": False, "v": PROTOCOL, "error": e.code, "message": e.message})
                    return
                if line is None:
                    return
                first = False
                conn.set("busy")
                reply = self._handle(conn, line)
                if reply is not None:
                    self._send(conn, reply)
        except (OSError, TimeoutError):
            pass  # client went away, timed out or was evicted
        except Exception:
            log.exception("control: connection failed")
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.sock.close()

    def _send(self, conn: Conn, obj: dict[str, Any]) -> None:
        self._send_raw(conn, encode(obj))

    def _send_raw(self, conn: Conn, data: bytes) -> None:
        prev = conn.state
        conn.set("send")
        conn.sock.settimeout(WRITE_TIMEOUT_S)  # since 3.5 the timeout bounds the whole sendall
        conn.sock.sendall(data)
        conn.state = prev

    def _handle(self, conn: Conn, line: bytes) -> dict[str, Any] | None:
        req_id: Any = None
        try:
            try:
                req = json.loads(line)
            except (ValueError, UnicodeDecodeError):
                raise ProtocolError("bad_json", "each request is one JSON object on one line") from None
            if not isinstance(req, dict):
                raise ProtocolError("bad_json", "a request is a JSON object")
            req_id = req.get("id")
            cmd = req.get("cmd")
            handler = {"ping": self._ping, "status": self._status, "events": self._events,
                       "flush": self._flush}.get(cmd) if isinstance(cmd, str) else None
            if cmd == "tail":
                self._tail(conn, req)
                return None
            if handler is None:
                raise ProtocolError("unknown_cmd", "commands: ping, status, events, flush, tail")
            out = {"ok": True, "v": PROTOCOL, **handler(req)}
        except ProtocolError as e:
            self.stats["bad_requests"] += 1
            out = {"ok": False, "v": PROTOCOL, "error": e.code, "message": e.message}
        except (OSError, TimeoutError):
            raise  # the connection itself failed
        except Exception as e:
            log.exception("control: request failed")
            out = {"ok": False, "v": PROTOCOL, "error": "internal", "message": f"{type(e).__name__}: {e}"}
        if req_id is not None:
            out["id"] = req_id
        return out

    # -------------------------------------------------------------------------------------- commands
    def _ping(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"version": __version__, "pid": os.getpid()}

    def _status(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"status": self.status()}

    def status(self) -> dict[str, Any]:
        # Cached briefly and computed by one thread at a time: the spool statistics query shares the
        # pipeline's database connection, so a client polling in a loop must not stall the pipeline.
        with self._status_lock:
            now = time.monotonic()
            if self._status_cache is None or now - self._status_cache[0] >= STATUS_CACHE_S:
                self._status_cache = (now, {**self.daemon.status(), "history": self._history_status()})
            st = dict(self._status_cache[1])
        d = self.daemon
        # Never cached: the verdict is cheap (no database) and must match STATUS= of the same moment.
        v = d.verdict()
        st["verdict"] = v.as_dict()
        st["now"] = v.now  # ages in the status and the verdict's since-times share one clock reading
        st["healthy"] = d.healthy()
        st["pipeline_age_s"] = round(time.monotonic() - d.pipeline.alive_mono, 1)
        with self._lock:
            st["control"] = {**self.stats, "clients": len(self._conns), "tails": len(self._subs),
                             "tail_dropped": self.stats["tail_dropped"] + sum(s.dropped for s in self._subs)}
        return st

    def _history_status(self) -> dict[str, Any]:
        h = self.history
        if h is None:
            return {"enabled": False}
        out: dict[str, Any] = {"enabled": True, **h.stats()}
        try:
            # Our own read-only connection: never waits for the writer's lock on the pipeline thread.
            db, _ = history.open_ro(h.path)
            try:
                out.update(history.summary(db))
            finally:
                db.close()
        except (OSError, sqlite3.Error) as e:
            out["error"] = str(e)
        return out

    def _events(self, req: dict[str, Any]) -> dict[str, Any]:
        if not self.history_path:
            raise ProtocolError("no_history", "the local history is off ([history] max_days or max_mib is 0)")
        q = history.Query(since_ms=_opt_ms(req, "since"), until_ms=_opt_ms(req, "until"),
                          names=_globs(req), limit=_int(req, "limit", 100, 1, history.MAX_QUERY),
                          before_id=_int(req, "before_id", None, 1, 2**63))
        try:
            rows, more, note = history.query_file(self.history_path, q)
        except FileNotFoundError:
            rows, more, note = [], False, "no history yet"
        except (OSError, sqlite3.Error) as e:
            raise ProtocolError("history_error", f"cannot read {self.history_path}: {e}") from None
        return {"events": rows, "more": more, "note": note}

    def _flush(self, req: dict[str, Any]) -> dict[str, Any]:
        self.daemon.flush()
        with self._status_lock:
            self._status_cache = None
        return {"requested_at": time.time()}

    def _tail(self, conn: Conn, req: dict[str, Any]) -> None:
        types = req.get("types")
        if types is not None and (not isinstance(types, list) or
                                  not all(isinstance(t, str) and t.upper() in Kind.__members__ for t in types)):
            raise ProtocolError("bad_args", "types: a list of event, begin, end, metric, health")
        sub = Subscriber(name_matcher(list(_globs(req))),
                         frozenset(Kind[t.upper()] for t in types) if types else None)
        with self._lock:
            if len(self._subs) >= MAX_TAILS:
                raise ProtocolError("busy", f"at most {MAX_TAILS} tails at a time")
            self._subs = (*self._subs, sub)
        try:
            self._send(conn, {"ok": True, "v": PROTOCOL, "stream": "tail", "id": req.get("id")})
            conn.set("tail")
            self._stream(conn, sub)
        finally:
            with self._lock:
                self._subs = tuple(s for s in self._subs if s is not sub)
                self.stats["tail_dropped"] += sub.dropped

    def _stream(self, conn: Conn, sub: Subscriber) -> None:
        reported = 0
        last_write = time.monotonic()
        while not self._stop.is_set():
            try:
                first = sub.q.get(timeout=1.0)
            except queue.Empty:
                if time.monotonic() - last_write >= HEARTBEAT_S:
                    self._send(conn, {"hb": time.time()})   # also how we notice a vanished client
                    last_write = time.monotonic()
                continue
            batch = [first]
            while len(batch) < 500:
                try:
                    batch.append(sub.q.get_nowait())
                except queue.Empty:
                    break
            out = b"".join(encode({"record": record_json(r)}) for r in batch)
            if sub.dropped != reported:
                out += encode({"dropped": sub.dropped - reported, "total_dropped": sub.dropped})
                reported = sub.dropped
            self._send_raw(conn, out)
            conn.set("tail")
            last_write = time.monotonic()
        self._send(conn, {"end": "daemon stopping"})


# ----------------------------------------------------------------------------------- argument checks
def _opt_ms(req: dict[str, Any], key: str) -> int | None:
    v = req.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ProtocolError("bad_args", f"{key}: unix time in seconds")
    return int(v * 1000)


def _int(req: dict[str, Any], key: str, default: int | None, lo: int, hi: int) -> Any:
    v = req.get(key, default)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ProtocolError("bad_args", f"{key}: an integer in {lo}..{hi}")
    return v


def _globs(req: dict[str, Any]) -> tuple[str, ...]:
    v = req.get("name")
    if v is None:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or len(v) > 32 or not all(isinstance(x, str) and 0 < len(x) <= 256 for x in v):
        raise ProtocolError("bad_args", "name: a glob or a list of up to 32 globs")
    return tuple(v)
