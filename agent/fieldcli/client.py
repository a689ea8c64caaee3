"""Finding the agent (config → socket) and talking to its control socket (docs/control-protocol.md)."""

from __future__ import annotations

import argparse
import errno
import json
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..config import DEFAULT_PATH, AgentConfig, load
from ..errors import ConfigError

DEFAULT_SOCKET = "/run/icvq/control.sock"
MAX_REPLY = 64 * 2**20

EXIT_OK = 0
EXIT_UNHEALTHY = 1      # running but something is wrong, or a wait timed out
EXIT_USAGE = 2
EXIT_DOWN = 3           # LSB "program is not running"
EXIT_PERM = 4           # LSB "insufficient privilege"


class Unavailable(Exception):
    """The daemon cannot be asked: down (EXIT_DOWN) or we may not (EXIT_PERM)."""

    def __init__(self, message: str, code: int = EXIT_DOWN) -> None:
        super().__init__(message)
        self.code = code

    def explain(self) -> str:
        return f"agent not running: {self}" if str(self).startswith("nothing listens") else str(self)


class RequestError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def add_common(p: argparse.ArgumentParser, *, json_flag: bool = True) -> None:
    p.add_argument("--config", "-c", default=None,
                   help="agent config (default: $ICVQ_CONFIG, else /etc/icvq/agent.toml)")
    p.add_argument("--socket", default=None, help="control socket (default: [control] socket of the config)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="machine-readable output")


@dataclass
class Context:
    config_path: str
    cfg: AgentConfig | None
    config_error: str
    socket: str

    def client(self, timeout_s: float = 10.0) -> Client:
        return Client(self.socket, timeout_s)


def context(args: argparse.Namespace) -> Context:
    path = getattr(args, "config", None) or os.environ.get("ICVQ_CONFIG") or str(DEFAULT_PATH)
    cfg: AgentConfig | None = None
    err = ""
    try:
        cfg = load(path)
    except ConfigError as e:
        err = str(e)
    sock = getattr(args, "socket", None) or os.environ.get("ICVQ_SOCKET") or \
        (cfg.control.socket if cfg else DEFAULT_SOCKET)
    return Context(path, cfg, err, sock)


class Client:
    def __init__(self, path: str, timeout_s: float = 10.0) -> None:
        self.path = path
        self.timeout_s = timeout_s
        self.sock: socket.socket | None = None
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
                                  "try sudo)", EXIT_PERM) from None
            if e.errno in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTDIR):
                raise Unavailable(f"nothing listens on {self.path}") from None
            raise Unavailable(f"cannot reach the agent at {self.path}: {e.strerror}") from None
        self.sock = s

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
                raise Unavailable(f"the agent did not answer on {self.path} within "
                                  f"{self.sock.gettimeout()} s") from None
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
                raise Unavailable(f"the agent refused us: {msg.get('message')}", EXIT_PERM)
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
