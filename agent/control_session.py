"""The control socket's connections: admission, requests, replies and tails (docs/control-protocol.md).

Imported at the first connection, not at start (agent/control.py keeps the listener and its accept thread): an
idle car nobody connects to does not hold this code (issue 13: ~50 KiB of Python objects of the idle RSS). The
bounds are the ones agent/control.py describes; each connection has its own thread ("control-conn").
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import field
from fnmatch import translate
from typing import TYPE_CHECKING, Any

from . import __version__, history
from .control import (
    FIRST_REQUEST_S,
    HEARTBEAT_S,
    IDLE_S,
    MAX_CLIENTS,
    MAX_LINE,
    MAX_TAILS,
    PROTOCOL,
    STALLED_WRITE_S,
    STATUS_CACHE_S,
    TAIL_QUEUE,
    WRITE_TIMEOUT_S,
    encode,
)
from .dataclass_shared import dataclass
from .peercred import Peer, allowed, peer_of
from .records import Kind, Record
from .wire import record_json

if TYPE_CHECKING:
    from .control import ControlServer

log = logging.getLogger("icvq.control")


class ProtocolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message



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


def admit(srv: ControlServer, sock: socket.socket) -> None:
    """A new connection (on the accept thread): check the peer, make room, serve it on its own thread."""
    peer = peer_of(sock)
    if not allowed(peer, srv.own_uid, srv.group_gid):
        srv.stats["refused_peer"] += 1
        now = time.monotonic()
        if now - srv._last_refusal_log > 10:
            srv._last_refusal_log = now
            log.warning("control: refused %s (not root, uid %d or group %s)", peer, srv.own_uid,
                        srv.group or "-")
        _reject(sock, "forbidden", f"uid {peer.uid} may not use the control socket: only root, "
                     f"uid {srv.own_uid} and members of group {srv.group or '(none)'}")
        return
    with srv._lock:
        if len(srv._conns) >= MAX_CLIENTS and not _evict_one(srv):
            srv.stats["refused_busy"] += 1
            _reject(sock, "busy", f"{MAX_CLIENTS} clients connected; try again")
            return
        conn = Conn(sock, peer)
        srv._conns.add(conn)
        srv.stats["accepted"] += 1
    try:
        threading.Thread(target=_serve, args=(srv, conn), name="control-conn", daemon=True).start()
    except RuntimeError:  # no more threads: refuse this one, keep the count right
        with srv._lock:
            srv._conns.discard(conn)
        _reject(sock, "busy", "out of threads")


def _evict_one(srv: ControlServer) -> bool:
    """At capacity: drop the connection idle longest, or one stuck writing to a client that never
    reads. A flood of idle connections then cannot lock out an engineer."""
    now = time.monotonic()
    cands = [c for c in srv._conns
             if c.state == "idle" or (c.state == "send" and now - c.since > STALLED_WRITE_S)]
    if not cands:
        return False
    victim = min(cands, key=lambda c: c.since)
    srv._conns.discard(victim)
    victim.kill()
    srv.stats["evicted"] += 1
    return True


def _reject(sock: socket.socket, code: str, message: str) -> None:
    try:
        sock.setblocking(False)
        sock.send(encode({"ok": False, "v": PROTOCOL, "error": code, "message": message}))
    except OSError:
        pass
    finally:
        sock.close()


# ----------------------------------------------------------------------------------- connections
def _serve(srv: ControlServer, conn: Conn) -> None:
    reader = LineReader(conn.sock)
    first = True
    try:
        while not srv._stop.is_set():
            conn.set("idle")
            try:
                line = reader.readline(FIRST_REQUEST_S if first else IDLE_S)
            except ProtocolError as e:
                srv.stats["bad_requests"] += 1
                _send(srv, conn, {"ok": False, "v": PROTOCOL, "error": e.code, "message": e.message})
                return
            if line is None:
                return
            first = False
            conn.set("busy")
            reply = _handle(srv, conn, line)
            if reply is not None:
                _send(srv, conn, reply)
    except (OSError, TimeoutError):
        pass  # client went away, timed out or was evicted
    except Exception:
        log.exception("control: connection failed")
    finally:
        with srv._lock:
            srv._conns.discard(conn)
        conn.sock.close()


def _send(srv: ControlServer, conn: Conn, obj: dict[str, Any]) -> None:
    _send_raw(srv, conn, encode(obj))


def _send_raw(srv: ControlServer, conn: Conn, data: bytes) -> None:
    prev = conn.state
    conn.set("send")
    conn.sock.settimeout(WRITE_TIMEOUT_S)  # since 3.5 the timeout bounds the whole sendall
    conn.sock.sendall(data)
    conn.state = prev


def _handle(srv: ControlServer, conn: Conn, line: bytes) -> dict[str, Any] | None:
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
        handler = _HANDLERS.get(cmd) if isinstance(cmd, str) else None
        if cmd == "tail":
            _tail(srv, conn, req)
            return None
        if handler is None:
            raise ProtocolError("unknown_cmd", "commands: ping, status, events, flush, tail")
        out = {"ok": True, "v": PROTOCOL, **handler(srv, req)}
    except ProtocolError as e:
        srv.stats["bad_requests"] += 1
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
def _ping(srv: ControlServer, req: dict[str, Any]) -> dict[str, Any]:
    return {"version": __version__, "pid": os.getpid()}


def _status(srv: ControlServer, req: dict[str, Any]) -> dict[str, Any]:
    return {"status": status(srv)}


def status(srv: ControlServer) -> dict[str, Any]:
    """What `icvq status` shows. Cached briefly and computed by one thread at a time: the spool statistics query
    shares the pipeline's database connection, so a client polling in a loop must not stall the pipeline."""
    with srv._status_lock:
        now = time.monotonic()
        if srv._status_cache is None or now - srv._status_cache[0] >= STATUS_CACHE_S:
            srv._status_cache = (now, {**srv.daemon.status(), "history": _history_status(srv)})
        st = dict(srv._status_cache[1])
    d = srv.daemon
    # Never cached: the verdict is cheap (no database) and must match STATUS= of the same moment.
    v = d.verdict()
    st["verdict"] = v.as_dict()
    st["now"] = v.now  # ages in the status and the verdict's since-times share one clock reading
    st["healthy"] = d.healthy()
    st["pipeline_age_s"] = round(time.monotonic() - d.pipeline.alive_mono, 1)
    with srv._lock:
        st["control"] = {**srv.stats, "clients": len(srv._conns), "tails": len(srv._subs),
                         "tail_dropped": srv.stats["tail_dropped"] + sum(s.dropped for s in srv._subs)}
    return st


def _history_status(srv: ControlServer) -> dict[str, Any]:
    h = srv.history
    if h is None:
        return {"enabled": False}
    out: dict[str, Any] = {"enabled": True, **h.stats()}
    try:
        # Our own read-only connection: never waits for the writer's lock on the pipeline thread.
        db, _ = history.open_ro(h.path, live=True)
        try:
            out.update(history.summary(db))
        finally:
            db.close()
    except (OSError, sqlite3.Error) as e:
        out["error"] = str(e)
    return out


def _events(srv: ControlServer, req: dict[str, Any]) -> dict[str, Any]:
    if not srv.history_path:
        raise ProtocolError("no_history", "the local history is off ([history] max_days or max_mib is 0)")
    q = history.Query(since_ms=_opt_ms(req, "since"), until_ms=_opt_ms(req, "until"),
                      names=_globs(req), limit=_int(req, "limit", 100, 1, history.MAX_QUERY),
                      before_id=_int(req, "before_id", None, 1, 2**63))
    try:
        rows, more, note = history.query_file(srv.history_path, q, live=True)
    except FileNotFoundError:
        rows, more, note = [], False, "no history yet"
    except (OSError, sqlite3.Error) as e:
        raise ProtocolError("history_error", f"cannot read {srv.history_path}: {e}") from None
    return {"events": rows, "more": more, "note": note}


def _flush(srv: ControlServer, req: dict[str, Any]) -> dict[str, Any]:
    srv.daemon.flush()
    with srv._status_lock:
        srv._status_cache = None
    return {"requested_at": time.time()}


def _tail(srv: ControlServer, conn: Conn, req: dict[str, Any]) -> None:
    types = req.get("types")
    if types is not None and (not isinstance(types, list) or
                              not all(isinstance(t, str) and t.upper() in Kind.__members__ for t in types)):
        raise ProtocolError("bad_args", "types: a list of event, begin, end, metric, health")
    sub = Subscriber(name_matcher(list(_globs(req))),
                     frozenset(Kind[t.upper()] for t in types) if types else None)
    with srv._lock:
        if len(srv._subs) >= MAX_TAILS:
            raise ProtocolError("busy", f"at most {MAX_TAILS} tails at a time")
        srv._subs = (*srv._subs, sub)
    try:
        _send(srv, conn, {"ok": True, "v": PROTOCOL, "stream": "tail", "id": req.get("id")})
        conn.set("tail")
        _stream(srv, conn, sub)
    finally:
        with srv._lock:
            srv._subs = tuple(s for s in srv._subs if s is not sub)
            srv.stats["tail_dropped"] += sub.dropped


def _stream(srv: ControlServer, conn: Conn, sub: Subscriber) -> None:
    reported = 0
    last_write = time.monotonic()
    while not srv._stop.is_set():
        try:
            first = sub.q.get(timeout=1.0)
        except queue.Empty:
            if time.monotonic() - last_write >= HEARTBEAT_S:
                _send(srv, conn, {"hb": time.time()})   # also how we notice a vanished client
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
        _send_raw(srv, conn, out)
        conn.set("tail")
        last_write = time.monotonic()
    _send(srv, conn, {"end": "daemon stopping"})


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


_HANDLERS: dict[str, Callable[[ControlServer, dict[str, Any]], dict[str, Any]]] = {
    "ping": _ping, "status": _status, "events": _events, "flush": _flush}
