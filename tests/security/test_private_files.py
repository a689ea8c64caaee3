"""State files are private whatever the umask; secret files others may read are refused (agent/private.py)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agentproc import REPO, AgentProc, base_config, to_toml, write_config
from broker import Mosquitto

from agent import private
from agent.errors import ConfigError


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_agent_state_is_private_under_umask_022(tmp_path: Path, broker: Mosquitto, umask_022: None) -> None:
    """The real daemon (subprocess, inheriting umask 022) creates its directories, spool, history (with their
    WAL/SHM) and control socket; `icvq dump` writes a bundle: none of it is readable by others."""
    cfg = base_config(tmp_path, broker.port, spool={"path": str(tmp_path / "state" / "q" / "spool.db")},
                      history={"path": str(tmp_path / "hist" / "history.db")},
                      control={"socket": str(tmp_path / "run" / "control.sock"), "group": ""})
    config = write_config(tmp_path, cfg)
    agent = AgentProc(config, tmp_path / "agent.log").start()
    try:
        deadline = time.monotonic() + 20
        # The history's WAL lives only while its connection is open (a burst of writes; agent/history.py):
        # its mode is checked in the next test.
        wanted = [tmp_path / "state" / "q" / "spool.db-wal", tmp_path / "hist" / "history.db"]
        while not all(p.exists() for p in wanted) and time.monotonic() < deadline:
            time.sleep(0.1)
        out = tmp_path / "bundle.tgz"
        r = subprocess.run([sys.executable, "-m", "agent.cli", "dump", "-c", str(config), "-o", str(out)],
                           capture_output=True, cwd=REPO, timeout=60)
        assert r.returncode == 0, r.stderr
        files = {p: mode(p) for d in ("state", "hist") for p in (tmp_path / d).rglob("*")}
        assert mode(tmp_path / "run" / "control.sock") == 0o660  # group icvq may connect, others may not
    finally:
        assert agent.stop() == 0
    assert mode(tmp_path / "state") == 0o750 and mode(tmp_path / "state" / "q") == 0o750
    assert mode(tmp_path / "hist") == 0o750 and mode(tmp_path / "run") == 0o750
    names = {p.name for p in files}
    assert {"spool.db", "spool.db-wal", "spool.db-shm", "history.db"} <= names, names
    dbs = {"spool.db", "spool.db-wal", "spool.db-shm", "history.db", "history.db-wal", "history.db-shm"}
    assert {p.name: oct(m) for p, m in files.items() if p.name in dbs and m != 0o640} == {}
    assert {p.name: oct(m) for p, m in files.items() if m & 0o027} == {}  # nothing else open wider either
    assert mode(out) == 0o600
    assert mode(tmp_path / "agent.toml") == 0o644  # the test's own file: umask 022 was in force


def test_history_wal_is_private_under_umask_022(tmp_path: Path, umask_022: None) -> None:
    from agent import history
    from agent.config import HistoryConfig
    from agent.records import Kind, Record

    h = history.History(HistoryConfig(path=str(tmp_path / "hist" / "history.db")))
    h.open()
    for name in ("a", "b"):                 # a burst: the connection, and so its WAL and -shm, stay
        h([Record(Kind.EVENT, name, 1_767_225_600_000, 1000, "b" * 32, True)])
    files = {p.name: mode(p) for p in (tmp_path / "hist").iterdir()}
    assert {"history.db", "history.db-wal", "history.db-shm"} <= set(files), files
    assert {n: oct(m) for n, m in files.items() if m != 0o640} == {}
    assert mode(tmp_path / "hist") == 0o750
    h.close()


def test_control_socket_mode(tmp_path: Path, umask_022: None) -> None:
    from agent.private import private_dir

    d = private_dir(tmp_path / "a" / "b")
    assert mode(tmp_path / "a") == 0o750 and mode(d) == 0o750
    private_dir(tmp_path / "a" / "b")  # existing: left alone, no error
    assert mode(d) == 0o750


def test_in_memory_database_creates_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    private.private_db(":memory:")
    assert list(tmp_path.iterdir()) == []


def test_existing_world_readable_state_file_is_closed(tmp_path: Path, umask_022: None) -> None:
    p = tmp_path / "spool.db"
    p.write_bytes(b"")
    assert mode(p) == 0o644
    private.private_db(p)
    assert mode(p) == 0o640


# ------------------------------------------------------------------------------------------------ secrets
def secret(tmp: Path, text: str, m: int = 0o600) -> str:
    p = tmp / "mqtt.pass"
    p.write_text(text)
    p.chmod(m)
    return str(p)


@pytest.mark.parametrize(("text", "password"), [
    ("s3cret\n", "s3cret"), ("s3cret", "s3cret"), ("s3cret\r\nsecond line\n", "s3cret"),
    (" spaced pw \nx", " spaced pw "),
])
def test_password_is_the_first_line_only(tmp_path: Path, text: str, password: str) -> None:
    assert private.read_password(secret(tmp_path, text)) == password


@pytest.mark.parametrize(("m", "ok"), [(0o600, True), (0o400, True), (0o640, False), (0o604, False),
                                       (0o620, False), (0o644, False)])
def test_password_file_readable_by_others_is_refused(tmp_path: Path, m: int, ok: bool) -> None:
    path = secret(tmp_path, "pw\n", m)
    if ok:
        assert private.read_password(path) == "pw"
        return
    with pytest.raises(ConfigError) as e:
        private.read_password(path)
    assert e.value.key == "uplink.password_file" and path in str(e.value) and f"{m:04o}" in str(e.value)


def test_empty_missing_and_non_regular_password_files_are_refused(tmp_path: Path) -> None:
    for path, words in ((secret(tmp_path, "\nsecond\n"), "empty"), (str(tmp_path / "nope"), "no such file"),
                        (str(tmp_path), "not a regular file")):
        with pytest.raises(ConfigError, match=words):
            private.read_password(path)
    # check-config reads the first line too where it may: an empty password fails there, not first at connect.
    with pytest.raises(ConfigError, match="empty"):
        private.check_secrets(secret(tmp_path, "\nsecond\n"), "")
    private.check_secrets(secret(tmp_path, "pw\n"), "")


def test_systemd_credentials_are_trusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LoadCredential= files: systemd grants the unit's user read access, possibly by an ACL (mode 0440)."""
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    (tmp_path / "mqtt.pass").write_text("pw\n")
    (tmp_path / "mqtt.pass").chmod(0o440)
    assert private.read_password(str(tmp_path / "mqtt.pass")) == "pw"
    private.check_secrets("/run/credentials/icvq-agent.service/mqtt.pass", "")  # check-config outside the unit
    monkeypatch.delenv("CREDENTIALS_DIRECTORY")
    with pytest.raises(ConfigError, match="0440"):
        private.read_password(str(tmp_path / "mqtt.pass"))


@pytest.mark.parametrize("mode_", [0o644, 0o600])
def test_check_config_names_an_unsafe_password_file(tmp_path: Path, mode_: int) -> None:
    path = secret(tmp_path, "pw\n", mode_)
    p = tmp_path / "agent.toml"
    p.write_text(to_toml({"vehicle": {"id": "V", "device": "d", "fleet": "f"},
                          "uplink": {"username": "car", "password_file": path}}))
    for argv in (["-m", "agent", "--config", str(p), "--check-config"],
                 ["-m", "agent.cli", "check-config", "-c", str(p)]):
        r = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=REPO, timeout=30)
        if mode_ == 0o600:
            assert r.returncode == 0, r.stderr
        else:
            assert r.returncode == 78 and "uplink.password_file" in r.stderr and path in r.stderr, r.stderr
            assert "chmod 600" in r.stderr and str(p) in r.stderr


def test_reload_after_fixing_the_password_file_connects_at_once(tmp_path: Path, broker: Mosquitto) -> None:
    """Held by a group-readable password file with a long back-off: `chmod 600` plus a reload (SIGHUP, the
    config unchanged) makes the uplink try again now instead of at the end of its back-off."""
    path = secret(tmp_path, "pw\n", 0o640)
    cfg = base_config(tmp_path, broker.port, uplink={"username": "car", "password_file": path,
                                                     "backoff_min_s": 600.0, "backoff_max_s": 600.0})
    agent = AgentProc(write_config(tmp_path, cfg), tmp_path / "agent.log").start()
    try:
        agent.wait_log("is accessible by group or others (mode 0640)", 10)
        os.chmod(path, 0o600)
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGHUP)
        agent.wait_log("config reloaded; reconnecting now", 10)
        agent.wait_log("connected to 127.0.0.1", 10)
    finally:
        assert agent.stop() == 0
