"""Files with something to hide: what the agent creates is private whatever the umask, and the secrets it
reads must be private or they are refused.

State (spool, history, their WAL/SHM files, bundles) is vehicle data: positions, VIN, event history. Under
systemd the unit's `UMask=0027` already gives 0640, but `pip install` users, tests and `icvq` run from a
shell have umask 022, which would make them 0644. So directories are made 0750 and database files are
created 0640 *before* SQLite opens them: SQLite gives its -wal and -shm files the mode of the database file,
so the whole set follows. Group read stays, for the field CLI run by members of the agent's group.

Secrets (`uplink.password_file`, `uplink.tls.key`) are refused, like ssh refuses a private key, when group or
others may read or write them or when someone other than the agent's user or root owns them: anyone in the
agent's group (the field engineers) could otherwise read the fleet credential. The password is the file's
first line (trailing CR/LF removed), as config/agent.toml documents; later lines are ignored. Files systemd
hands over as credentials (`LoadCredential=`, under $CREDENTIALS_DIRECTORY or /run/credentials/) are exempt
from the mode check: systemd keeps them readable by the unit's user and root only, sometimes through an ACL
that makes the mode read 0440.

No threads; called at open time and per connection attempt (one stat and one small read). `replace_private`
is the one atomic, durable small-file write (campaigns, the drop ledger).
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from .errors import ConfigError

DIR_MODE = 0o750
FILE_MODE = 0o640


def private_dir(path: Path | str, mode: int = DIR_MODE) -> Path:
    """mkdir -p; directories this call creates get `mode` exactly (umask ignored). Existing ones are left as
    they are: /var/lib/icvq belongs to systemd's StateDirectory= and a test's tmp dir to the test."""
    p = Path(path)
    missing: list[Path] = []
    q = p
    while not q.exists() and q != q.parent:
        missing.append(q)
        q = q.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode)
        except FileExistsError:
            continue
        os.chmod(d, mode)
    return p


def private_file(path: Path | str, mode: int = FILE_MODE) -> Path:
    """Create `path` empty with `mode` (umask ignored) unless it exists; an existing file keeps its mode but
    loses any bits for others, so an upgrade from a 0644 spool closes it too."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        st = p.stat()
        if st.st_mode & 0o007:
            os.chmod(p, stat.S_IMODE(st.st_mode) & ~0o007)
        return p
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
    return p


def fsync_dir(path: Path | str) -> None:
    """Make a rename or unlink in `path` durable: without it a power cut may bring the old entry back."""
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def replace_private(path: Path | str, body: bytes, mode: int = 0o600) -> None:
    """Replace `path` with `body` atomically and durably: a fresh temp file beside it with `mode` (umask
    ignored, a stale temp from a crash removed first), fsync, rename over `path`, fsync the directory. A power
    cut leaves the old or the new content, never a torn file. Raises OSError when that is impossible."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, body)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, p)
    fsync_dir(p.parent)


def private_db(path: Path | str) -> Path:
    """A SQLite database path ready to open: parent dir 0750 if new, file 0640 (its -wal/-shm follow).
    Best effort: on a full or read-only disk it leaves the error to SQLite, whose errors the spool handles."""
    p = Path(path)
    if str(path) in ("", ":memory:"):  # SQLite's in-memory database (the fleet simulator's spools)
        return p
    try:
        private_dir(p.parent)
        private_file(p)
    except OSError:
        pass
    return p


# ------------------------------------------------------------------------------------------------ secrets
def systemd_credential(path: str) -> bool:
    """Whether `path` is one of the credentials systemd passed the unit (private to it by construction)."""
    real = os.path.realpath(path)
    dirs = [os.environ.get("CREDENTIALS_DIRECTORY", ""), "/run/credentials"]
    return any(d and (real + "/").startswith(os.path.realpath(d).rstrip("/") + "/") for d in dirs)


def check_secret(path: str, key: str, *, owner: bool = True) -> os.stat_result | None:
    """Raise ConfigError naming the file and key when `path` is not a private regular file of ours. `owner=False`
    skips the owner check, for `--check-config` run by another user than the agent's. None for a systemd
    credential seen from outside its unit (nothing to check there)."""
    if systemd_credential(path) and not owner:
        return None
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file", key=key) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot stat: {e.strerror}", key=key) from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path}: not a regular file", key=key)
    if systemd_credential(path):
        return st
    if st.st_mode & 0o077:
        raise ConfigError(f"{path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}): "
                          f"refusing to use it; chmod 600 {path}", key=key)
    me = os.geteuid()
    if owner and st.st_uid not in (me, 0):
        raise ConfigError(f"{path} is owned by uid {st.st_uid}, not by the agent's user (uid {me}) or root: "
                          "refusing to use it", key=key)
    return st


def read_password(path: str, key: str = "uplink.password_file") -> str:
    """The first line of a private password file (CR/LF stripped); refuses unsafe or empty files."""
    check_secret(path, key)
    return _first_line(path, key)


def _first_line(path: str, key: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            line = f.readline()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}", key=key) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: first line is not UTF-8", key=key) from None
    password = line.rstrip("\r\n")
    if not password:
        raise ConfigError(f"{path}: the first line (the password) is empty", key=key)
    return password


def check_secrets(password_file: str, tls_key: str) -> None:
    """--check-config's view: every configured secret file is private; the password file's first line is read
    only where this user may (a field engineer checking the agent's config usually may not)."""
    if password_file:
        check_secret(password_file, "uplink.password_file", owner=False)
        if os.access(password_file, os.R_OK):
            _first_line(password_file, "uplink.password_file")
    if tls_key:
        check_secret(tls_key, "uplink.tls.key", owner=False)
