"""Helpers for the field-tool tests: a real sshd on a loopback port, the `icvq` CLI as a subprocess (also
as another user), raw control-socket clients and a history seeded with "yesterday's" events."""

from __future__ import annotations

import atexit
import json
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from agent.config import HistoryConfig
from agent.history import History
from agent.records import Kind, Record

REPO = Path(__file__).resolve().parents[2]
MAKE_DEPS = "run `make deps` (tools/deps/apt-field.txt: openssh-server, openssh-client, python3-psutil, " \
            "python3-msgpack)"


def need(path: str) -> str:
    if not Path(path).exists() and not shutil.which(path):
        pytest.fail(f"{path} is missing: {MAKE_DEPS}")
    return shutil.which(path) or path


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "agent.cli", *args], capture_output=True, timeout=timeout,
                          cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})


_PUBLIC: list[Path] = []


def public_agent() -> Path:
    """A world-readable copy of the agent package: the checkout may sit under a 0700 home (CI clones)."""
    if not _PUBLIC:
        d = Path(tempfile.mkdtemp(prefix="icvq-cli-"))
        shutil.copytree(REPO / "agent", d / "agent", ignore=shutil.ignore_patterns("__pycache__"))
        for p in [d, *d.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        atexit.register(shutil.rmtree, d, True)
        _PUBLIC.append(d)
    return _PUBLIC[0]


def cli_as(user: str, group: str, groups: list[int], *args: str,
           timeout: float = 30) -> subprocess.CompletedProcess[bytes]:
    """The CLI as another user through setpriv, with the distro python (ours lives under root's home)."""
    py = need("/usr/bin/python3")
    grp_opt = ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
    argv = [need("setpriv"), f"--reuid={user}", f"--regid={group}", *grp_opt, "env", "-i",
            f"PYTHONPATH={public_agent()}", "LC_ALL=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1", py, "-m", "agent.cli",
            *args]
    r = subprocess.run(argv, capture_output=True, timeout=timeout, cwd="/")
    if b"No module named" in r.stderr:
        pytest.fail(f"the distro python cannot import the CLI's dependencies: {MAKE_DEPS}\n{r.stderr.decode()}")
    return r


class Sshd:
    """sshd -D on 127.0.0.1:<free port>, keys and config in tmp; `ssh()` runs a command on "the car"."""

    def __init__(self, tmp: Path, port: int) -> None:
        self.tmp = tmp
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sshd:
        sshd, keygen = need("/usr/sbin/sshd"), need("ssh-keygen")
        need("ssh")
        self.tmp.mkdir(parents=True, exist_ok=True)
        for name in ("host_key", "user_key"):
            subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(self.tmp / name)], check=True)
        (self.tmp / "authorized_keys").write_bytes((self.tmp / "user_key.pub").read_bytes())
        cfg = self.tmp / "sshd_config"
        cfg.write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {self.tmp}/host_key
PidFile {self.tmp}/sshd.pid
AuthorizedKeysFile {self.tmp}/authorized_keys
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
AcceptEnv ICVQ_CONFIG ICVQ_LOG_FILE PYTHONPATH
PrintMotd no
LogLevel ERROR
""")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        log = (self.tmp / "sshd.log").open("ab")
        self.proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(cfg)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        pytest.fail(f"sshd did not start:\n{(self.tmp / 'sshd.log').read_text()}")

    def ssh(self, icvq_args: list[str], env: dict[str, str], stdout: Any = subprocess.PIPE,
            timeout: float = 60, user: str = "") -> subprocess.CompletedProcess[bytes]:
        """`ssh car icvq ARGS`: env travels with SetEnv/AcceptEnv like an engineer's ssh_config would do it.
        With `user`, the command runs as that user without supplementary groups (setpriv, the distro python
        and a world-readable copy of the CLI), like an engineer whose account is not in the agent's group."""
        setenv = " ".join(f"{k}={v}" for k, v in {"PYTHONPATH": str(REPO), **env}.items())
        remote = shlex.join([sys.executable, "-m", "agent.cli", *icvq_args])
        if user:
            pass_env = [f"{k}={v}" for k, v in env.items()]
            remote = shlex.join([need("setpriv"), f"--reuid={user}",
                                 f"--regid={pwd.getpwnam(user).pw_gid}", "--clear-groups", "env",
                                 "-i", f"PYTHONPATH={public_agent()}", "LC_ALL=C.UTF-8",
                                 "PYTHONDONTWRITEBYTECODE=1", *pass_env, need("/usr/bin/python3"), "-m",
                                 "agent.cli", *icvq_args])
        argv = ["ssh", "-F", "/dev/null", "-i", str(self.tmp / "user_key"), "-p", str(self.port),
                "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "LogLevel=ERROR", "-o", f"SetEnv={setenv}", "root@127.0.0.1", remote]
        return subprocess.run(argv, stdout=stdout, stderr=subprocess.PIPE, timeout=timeout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


# ------------------------------------------------------------------------------------------- history
def seed_history(path: Path, now: float | None = None) -> list[tuple[str, float]]:
    """Yesterday's and today's events, written the way the daemon writes them (the History observer)."""
    now = now or time.time()
    h = History(HistoryConfig(path=str(path)))
    h.open()
    plan = [(Kind.BEGIN, "display.freeze", now - 26 * 3600, {"fb": 0}, 7),
            (Kind.END, "display.freeze", now - 26 * 3600 + 4, {"fb": 0, "duration_ms": 4100}, 7),
            (Kind.EVENT, "link.lost", now - 3 * 3600, {"iface": "wwan0"}, None),
            (Kind.EVENT, "display.blank", now - 600, {"fb": 1}, None),
            (Kind.METRIC, "system.cpu_pct", now - 60, {}, None)]
    h([Record(k, n, int(t * 1000), int(t * 1000) % 10**9, "b" * 32, True, d, ep) for k, n, t, d, ep in plan])
    h.close()
    return [(n, t) for k, n, t, _, _ in plan if k is not Kind.METRIC]


# ------------------------------------------------------------------------------------ raw socket client
def connect(path: str | Path, timeout: float = 5.0) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(path))
    return s


def request(path: str | Path, req: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    with connect(path, timeout) as s:
        s.sendall(json.dumps(req).encode() + b"\n")
        return Lines(s).read()


class Lines:
    """Replies one JSON line at a time (several may arrive in one recv)."""

    def __init__(self, s: socket.socket) -> None:
        self.s = s
        self.buf = b""

    def read(self) -> dict[str, Any]:
        while b"\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return dict(json.loads(line))


