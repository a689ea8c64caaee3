"""Finding the agent (config → socket) and talking to its control socket (docs/control-protocol.md).

When the agent does not answer, the reason matters at the roadside and each has its own exit code: nothing
listens (NOT RUNNING, 3), we may not ask (NO PERMISSION, 4), or a process owns the socket but does not answer
(HUNG, 5). The owner is the process that called listen() on this config's socket, read with SO_PEERCRED on
our end of the connection, so an `icvq-agent` serving another config never confuses the answer. A stopped
owner (SIGSTOP, a debugger) is reported at once instead of after the read timeout.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
import struct
from collections.abc import Iterator
from typing import Any

import psutil

from ..config import DEFAULT_PATH, AgentConfig, load
from ..dataclass_shared import dataclass
from ..errors import ConfigError

DEFAULT_SOCKET = "/run/icvq/control.sock"
MAX_REPLY = 64 * 2**20

# Exit codes of every subcommand (docs/field-guide.md; EPILOG is what --help shows).
EXIT_OK = 0
EXIT_FAILING = 1        # verdict "failing", or a wait (flush --wait) timed out
EXIT_USAGE = 2
EXIT_DOWN = 3           # LSB "program is not running": nothing listens on the socket
EXIT_PERM = 4           # LSB "insufficient privilege": the socket's mode or the agent refused us
EXIT_HUNG = 5           # a process owns the socket but does not answer (stopped, deadlocked)
EXIT_DEGRADED = 6       # verdict "degraded": collecting and keeping data, something needs a look
EX_DATAERR = 65         # sysexits: the input file is not what it should be
EX_NOINPUT = 66         # sysexits: the input file is missing or unreadable
EX_IOERR = 74           # sysexits: a file could not be written (dump -o)
# 78 (EX_CONFIG, invalid config) is agent.errors.EX_CONFIG.

EPILOG = """exit status:
  0   healthy / done          1   failing, or --wait timed out
  2   usage error             3   agent NOT RUNNING (nothing listens on its socket)
  4   NO PERMISSION to ask    5   agent HUNG (owns the socket, does not answer)
  6   degraded                65  not a valid payload or bundle
  66  input file missing or unreadable   74  output file not writable
  78  invalid config"""

NOT_RUNNING, HUNG, NO_PERMISSION = "not_running", "hung", "no_permission"
LABELS = {NOT_RUNNING: "NOT RUNNING", HUNG: "HUNG", NO_PERMISSION: "NO PERMISSION"}
CODES = {NOT_RUNNING: EXIT_DOWN, HUNG: EXIT_HUNG, NO_PERMISSION: EXIT_PERM}


class Unavailable(Exception):
    """The daemon cannot be asked: not running, hung, or we may not. `pid` is the socket owner's, if known."""

    def __init__(self, message: str, state: str = NOT_RUNNING, pid: int | None = None) -> None:
        super().__init__(message)
        self.state = state
        self.code = CODES[state]
        self.pid = pid

    @property
    def label(self) -> str:
        return LABELS[self.state]

    def explain(self) -> str:
        return f"agent {self.label}: {self}"


def headline(state: str, reason: str) -> str:
    """The first line when the agent could not be asked: which of the three, and why."""
    if state == NO_PERMISSION:
        return f"icvq-agent: NO PERMISSION to ask it ({reason})"
    return f"icvq-agent is {LABELS.get(state, state.upper())} ({reason})"


def peer_pid(s: socket.socket) -> int | None:
    """The pid that called listen() on the socket we connected to (0 from another pid namespace)."""
    try:
        pid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))[0]
    except OSError:
        return None
    return pid or None


def owner_pid(path: str) -> int | None:
    """Best effort when we cannot connect: the process holding a listening socket bound to `path`. Needs
    to read the other process's fds (root or the same uid); None otherwise."""
    try:
        for c in psutil.net_connections("unix"):
            if c.laddr == path and c.pid:
                return c.pid
    except (psutil.Error, OSError):
        pass
    return None


def stopped(pid: int | None) -> bool:
    try:
        return pid is not None and psutil.Process(pid).status() in (psutil.STATUS_STOPPED,
                                                                   psutil.STATUS_TRACING_STOP)
    except psutil.Error:
        return False


class RequestError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def add_common(p: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    # SUPPRESS: an option given before the subcommand (`icvq -c F status`) is not overwritten by a default.
    p.add_argument("--config", "-c", default=argparse.SUPPRESS,
                   help="agent config (default: $ICVQ_CONFIG, else /etc/icvq/agent.toml)")
    p.add_argument("--socket", default=argparse.SUPPRESS,
                   help="control socket (default: $ICVQ_SOCKET, else [control] socket of the config)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="machine-readable output (JSON on stdout)")


@dataclass
class Context:
    config_path: str
    cfg: AgentConfig | None
    config_error: str
    socket: str

    def client(self, timeout_s: float = 10.0) -> Client:
        return Client(self.socket, timeout_s)


def config_path(args: argparse.Namespace) -> str:
    """-c/--config, else $ICVQ_CONFIG, else the installed default."""
    return getattr(args, "config", None) or os.environ.get("ICVQ_CONFIG") or str(DEFAULT_PATH)


def context(args: argparse.Namespace) -> Context:
    path = config_path(args)
    cfg: AgentConfig | None = None
    err = ""
    try:
        cfg = load(path)
    except ConfigError as e:
        err = str(e)
    sock = getattr(args, "socket", None) or os.environ.get("ICVQ_SOCKET") or \
        (cfg.control.socket if cfg else socket_of(running_with(path)) or DEFAULT_SOCKET)
    return Context(path, cfg, err, sock)


def running_with(config_path: str) -> list[int]:
    """Agents started with this config (`-c/--config PATH` on their command line, or none for the default
    path). Never other configs' agents."""
    want = os.path.realpath(config_path)
    default = want == os.path.realpath(DEFAULT_PATH)
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            argv = p.info["cmdline"] or []
        except psutil.Error:
            continue
        if p.info["pid"] == os.getpid() or not any(os.path.basename(a) == "icvq-agent" or a == "agent"
                                                   for a in argv[:3]):
            continue
        given = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("-c", "--config")]
        given += [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
        if any(os.path.realpath(g) == want for g in given) or (default and not given):
            out.append(p.info["pid"])
    return out


def socket_of(pids: list[int]) -> str | None:
    """The control socket an agent listens on, when its config cannot be read (an edit broke it and the
    agent refused the reload, so it runs on with the config it had): its bound SOCK_STREAM unix socket, the
    only one it has. Needs to read the agent's fds (root or the agent's uid); None otherwise."""
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            conns = getattr(proc, "net_connections", None) or proc.connections   # psutil < 6 (a distro's)
            paths = {c.laddr for c in conns("unix")
                     if c.type == socket.SOCK_STREAM and isinstance(c.laddr, str) and c.laddr.startswith("/")}
        except (psutil.Error, OSError):
            continue
        if len(paths) == 1:
            return paths.pop()
    return None


class Client:
    def __init__(self, path: str, timeout_s: float = 10.0) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self.sock: socket.socket | None = None
        self.pid: int | None = None
        self._buf = bytearray()

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout_s)
        try:
            s.connect(self.path)
        except OSError as e:
            s.close()
            if e.errno in (errno.EACCES, errno.EPERM):
                raise Unavailable(f"no permission to use {self.path} (are you in the agent's group? "
                                  "try sudo)", NO_PERMISSION, owner_pid(self.path)) from None
            if isinstance(e, TimeoutError) or e.errno == errno.EAGAIN:
                # The listen backlog is full: its owner stopped accepting long ago.
                pid = owner_pid(self.path)
                raise Unavailable(f"{self.path} accepts no connections (listen queue full)", HUNG, pid) from None
            if e.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
                raise Unavailable(f"nothing listens on {self.path}") from None
            raise Unavailable(f"cannot reach the agent at {self.path}: {e.strerror}") from None
        self.sock = s
        self.pid = peer_pid(s)
        if stopped(self.pid):
            self.close()
            raise Unavailable(f"pid {self.pid}, which owns {self.path}, is stopped (SIGSTOP or a debugger) and "
                              f"cannot answer; `kill -CONT {self.pid}` resumes it", HUNG, self.pid)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def send(self, req: dict[str, Any]) -> None:
        assert self.sock is not None
        try:
            self.sock.sendall(json.dumps(req).encode() + b"\n")
        except OSError:
            pass  # the server may have refused us already; its reason is waiting to be read

    def read(self, timeout_s: float | None = None) -> dict[str, Any]:
        assert self.sock is not None
        self.sock.settimeout(self.timeout_s if timeout_s is None else timeout_s)
        while b"\n" not in self._buf:
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                state = "stopped (SIGSTOP or a debugger)" if stopped(self.pid) else "running"
                raise Unavailable(f"pid {self.pid or '?'} owns {self.path} but did not answer within "
                                  f"{self.sock.gettimeout():.0f} s (process {state})", HUNG, self.pid) from None
            except OSError as e:
                raise Unavailable(f"the agent closed the connection: {e.strerror}") from None
            if not chunk:
                raise Unavailable("the agent closed the connection")
            self._buf += chunk
            if len(self._buf) > MAX_REPLY:
                raise Unavailable("reply too long")
        i = self._buf.index(b"\n")
        line = bytes(self._buf[:i])
        del self._buf[: i + 1]
        try:
            msg: dict[str, Any] = json.loads(line)
        except ValueError:
            raise Unavailable(f"not an icvq control socket: {self.path} answered {line[:60]!r}") from None
        if msg.get("ok") is False:
            if msg.get("error") == "forbidden":
                raise Unavailable(f"the agent refused us: {msg.get('message')}", NO_PERMISSION, self.pid)
            raise RequestError(str(msg.get("error")), str(msg.get("message")))
        return msg

    def request(self, req: dict[str, Any]) -> dict[str, Any]:
        self.send(req)
        return self.read()

    def stream(self, req: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """A streaming command: the first reply, then every message until the server closes."""
        self.send(req)
        self.read()
        while True:
            yield self.read(timeout_s=30.0)  # the server writes a heartbeat every few seconds


def ask(ctx: Context, req: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
    with ctx.client(timeout_s) as c:
        return c.request(req)
