"""The agent's configuration as the running daemon holds it: frozen dataclasses, one per section.

Each probe module under `agent/probes/` declares its own `Config` dataclass for `[probes.<name>]`, so adding a
probe never edits this file. No threads. Reading and validating the files (`load`, `from_mapping`,
`probe_names`, `dropin_dir`) lives in agent/config_load.py and is served from here on first use (PEP 562,
agent/lazy.py), so no caller changed: the idle daemon keeps these classes (≈ 10 KiB of Python objects each,
tracemalloc) but not the loader, which only start-up, a SIGHUP reload, `--check-config` and the field CLI run.
`release()` is how the daemon process lets go of the loader and what only it imports (STARTUP_MODULES).
"""

from __future__ import annotations

import gc
import hashlib
import importlib
import json
import sys
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import lazy
from .blackbox.settings import BlackboxConfig
from .dataclass_shared import dataclass
from .errors import ConfigError
from .schema import opt, to_plain
from .software import SoftwareSource

if TYPE_CHECKING:
    from .config_load import dropin_dir as dropin_dir
    from .config_load import from_mapping as from_mapping
    from .config_load import load as load
    from .config_load import probe_names as probe_names

DEFAULT_PATH = Path("/etc/icvq/agent.toml")


def _topic_level(v: str) -> str:
    # These become MQTT topic levels: wildcards or separators would break routing.
    if not v or any(c in v for c in "/+#\0 "):
        return "must be non-empty without '/', '+', '#', NUL or spaces"
    return ""


def _absolute_or_empty(v: str) -> str:
    return "must be an absolute path" if v and not v.startswith("/") else ""


@dataclass(frozen=True)
class VehicleConfig:
    id: str = opt(check=_topic_level)
    device: str = opt(check=_topic_level)
    fleet: str = opt(check=_topic_level)
    # A file holding the fleet key: when set, an HMAC pseudonym replaces the id on the wire (agent/pseudonym.py).
    pseudonym_key_file: str = opt("", check=_absolute_or_empty)

    def validate(self) -> None:
        """The same key checks for a VehicleConfig made in code (e.g. with a pseudonym as its id)."""
        for key in ("id", "device", "fleet"):
            if wrong := _topic_level(getattr(self, key)):
                raise ConfigError(wrong, key=key)


@dataclass(frozen=True)
class TlsConfig:
    ca: str = ""
    cert: str = ""
    key: str = ""
    min_version: str = opt("1.2", choices=("1.2", "1.3"))

    def validate(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise ConfigError("cert and key go together", key="cert" if not self.cert else "key")


@dataclass(frozen=True)
class UplinkConfig:
    host: str = "localhost"
    port: int = opt(1883, min=1, max=65535)
    topic_prefix: str = "icvq/v1"
    keepalive_s: int = opt(60, min=5, max=3600)
    tls: TlsConfig = opt(factory=TlsConfig)
    allow_plaintext: bool = False  # plaintext off loopback: agent/tls.py decides and says why
    username: str = opt("", secret=True)  # token-auth brokers put the token here
    password_file: str = ""
    protocol: str = opt("auto", choices=("auto", "5", "3.1.1"))
    max_batch_kib: int = opt(96, min=1, max=16384)
    max_inflight: int = opt(8, min=1, max=100)
    # Samples only: events and episodes are sealed at once (agent/pacing.py). 300 s keeps a drive day on
    # the default probes under 0.5 MB on the wire (docs/performance.md, "Live traffic").
    batch_linger_s: float = opt(300.0, min=0.0, max=3600.0)
    compress: str = opt("auto", choices=("auto", "never", "always"))
    message_expiry_s: int = opt(0, min=0, max=2**32 - 1)
    retry_no_subscribers: bool = True
    connect_timeout_s: float = opt(10.0, min=1.0, max=300.0)
    backoff_min_s: float = opt(1.0, min=0.1, max=600.0)
    backoff_max_s: float = opt(120.0, min=1.0, max=3600.0)
    reconnect_probe_s: float = opt(2.5, min=0.1, max=600.0)


@dataclass(frozen=True)
class SpoolConfig:
    path: str = "/var/lib/icvq/spool.db"
    max_mib: float = opt(64.0, min=0.25, max=65536.0)
    min_free_mib: float = opt(8.0, min=0.0, max=65536.0)
    commit_interval_s: float = opt(60.0, min=0.05, max=600.0)
    memory_max_records: int = opt(20000, min=100, max=10_000_000)
    ledger_path: str = ""   # "" = drops-ledger.json next to control.socket (/run/icvq under the unit)


@dataclass(frozen=True)
class HistoryConfig:
    path: str = "/var/lib/icvq/history.db"
    max_days: float = opt(14.0, min=0.0, max=3650.0)
    max_mib: float = opt(16.0, min=0.0, max=65536.0)


@dataclass(frozen=True)
class ControlConfig:
    socket: str = "/run/icvq/control.sock"
    group: str = "icvq"


@dataclass(frozen=True)
class AgentSection:
    log_level: str = opt("info", choices=("debug", "info", "warning", "error"))
    nice: int = opt(10, min=0, max=19)
    io_idle: bool = True
    health_interval_s: float = opt(60.0, min=1.0, max=86400.0)
    components: Mapping[str, str] = opt(factory=dict)
    # Where to read a component's version and SWIN (GB 44496) at start: [agent.software.<name>] (software.py).
    software: Mapping[str, SoftwareSource] = opt(factory=dict)


@dataclass(frozen=True)
class AgentConfig:
    vehicle: VehicleConfig
    uplink: UplinkConfig
    spool: SpoolConfig
    history: HistoryConfig
    control: ControlConfig
    agent: AgentSection
    probes: Mapping[str, Any]
    sources: tuple[str, ...] = ()
    blackbox: BlackboxConfig = BlackboxConfig()

    @property
    def digest(self) -> str:
        plain = to_plain(self)
        plain.pop("sources", None)
        return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:16]

    def plain(self, *, redact: bool = True) -> dict[str, Any]:
        return to_plain(self, redact=redact)


def probe_module(name: str) -> Any:
    return importlib.import_module(f"agent.probes.{name}")


# The loader and what only it imports, with their submodules (tracemalloc: config_load ≈ 26 KiB, tomllib ≈ 106,
# pkgutil ≈ 55): the daemon process releases them before it imports the rest of the daemon and again after each
# reload (agent/__main__.py, Daemon.reload), and the next use imports them again. Not agent.disabled (the
# DisabledProbes in the config are its class's) nor agent.schema (`to_plain` makes the config digest at every
# connect, `opt` is bound in every settings module).
STARTUP_MODULES = ("agent.config_load", "tomllib", "tomli", "pkgutil")


def release(modules: Collection[str], keep: Collection[str]) -> None:
    """Unload `modules` and their submodules, except those in `keep` (imported before: someone else may hold
    them), then collect: module dicts sit in reference cycles with their functions, and an idle daemon may run
    no full collection for hours. A module whose function or class is still referenced stays alive anyway
    (and a re-import makes a second copy), so callers import these modules' names locally, never at the top."""
    dropped = [m for m in sys.modules if m not in keep and any(m == x or m.startswith(x + ".") for x in modules)]
    for m in dropped:
        del sys.modules[m]
        parent, _, child = m.rpartition(".")
        if parent in sys.modules and child in vars(sys.modules[parent]):
            delattr(sys.modules[parent], child)
    if dropped:
        gc.collect()


# Start-up's code, served from agent/config_load.py when first asked for (agent/lazy.py).
_LOADING = frozenset({"load", "from_mapping", "probe_names", "dropin_dir", "_merge", "_copy", "_mark", "_read_toml",
                      "_origin_of", "_probe_configs", "_probe_config"})
__getattr__ = lazy.forward(__name__, "config_load", _LOADING)
