"""A throwaway PostgreSQL cluster (initdb into a temp dir, pg_ctl on a free port) for tests and benchmarks.

Never touches a server that is already running. PostgreSQL refuses to run as root, so as root the cluster
runs as the `postgres` user (runuser) in a directory that user owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

MISSING = "PostgreSQL server binaries (initdb, pg_ctl) not found: run `make deps` (installs postgresql)"


def bindir() -> Path | None:
    cands = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
    for c in cands:
        if (Path(c) / "initdb").exists() and (Path(c) / "pg_ctl").exists():
            return Path(c)
    found = shutil.which("initdb")
    return Path(found).parent if found and shutil.which("pg_ctl") else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TempPostgres:
    def __init__(self, *, fsync: bool = True) -> None:
        b = bindir()
        if b is None:
            raise RuntimeError(MISSING)
        self.bin = b
        self.fsync = fsync
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="icvq-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "server.log"
        self._as: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.started = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        res = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args[:2])} failed ({res.returncode}): {res.stderr[-2000:]}\n{log}")

    def start(self) -> TempPostgres:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--no-sync")
        self.resume()
        return self

    def resume(self) -> None:
        """Start the server (again) on the same data and port."""
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=50"
        if not self.fsync:
            # Only what survives a server crash when the OS does not crash. synchronous_commit stays on: the
            # consumer acknowledges after COMMIT returns, so a commit the server could still lose would be a
            # lost batch (an immediate stop loses asynchronously committed transactions).
            opts += " -c fsync=off -c full_page_writes=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w",
                  "-t", "60", "start")
        self.started = True

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pause(self) -> None:
        """Stop the server abruptly (an outage), keeping the data for resume()."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        self.started = False

    def stop(self) -> None:
        if self.started:
            try:
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> TempPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
