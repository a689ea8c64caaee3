"""Reading the configuration: built-in defaults → main TOML file → drop-ins `agent.d/*.toml` (lexical order),
merged, then built into agent.config's dataclasses and validated (agent/schema.py).

Tables merge key by key; an array in a later layer replaces the earlier one. Each probe module under
`agent/probes/` declares its own `Config` dataclass for `[probes.<name>]`, so adding a probe never edits
agent/config.py. No threads.

Only start-up, SIGHUP reload, `--check-config` and the field CLI run this code, so it lives apart from the
dataclasses the running daemon holds: agent.config serves `load`, `from_mapping`, `probe_names` and
`dropin_dir` from here on first use (agent/lazy.py), and the daemon process releases this module, tomllib and
pkgutil before it imports the rest of the daemon (agent/__main__.py, config.STARTUP_MODULES; issue 13: ≈ 26,
106 and 55 KiB of Python objects by tracemalloc, held at idle before). A reload imports them again and
releases them again; nothing outside this module may bind its functions (`from .config import load` at a
module's top would keep this module's dict alive).
"""

from __future__ import annotations

import pkgutil
import sys
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from . import config, disabled
from .blackbox.settings import BlackboxConfig
from .config import (
    DEFAULT_PATH,
    AgentConfig,
    AgentSection,
    ControlConfig,
    HistoryConfig,
    SpoolConfig,
    UplinkConfig,
    VehicleConfig,
)
from .errors import ConfigError, collecting, raise_collected
from .schema import Origin, build

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


def probe_names() -> list[str]:
    from . import probes

    return sorted(m.name for m in pkgutil.iter_modules(probes.__path__) if not m.name.startswith("_"))


def _merge(into: dict[str, Any], layer: Mapping[str, Any], source: str, origins: dict[str, str],
           prefix: str = "") -> None:
    for k, v in layer.items():
        path = f"{prefix}.{k}" if prefix else k
        if isinstance(v, Mapping) and isinstance(into.get(k), dict):
            _merge(into[k], v, source, origins, path)
        else:
            into[k] = _copy(v)
            origins[path] = source
            _mark(v, path, source, origins)


def _copy(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


def _mark(v: Any, path: str, source: str, origins: dict[str, str]) -> None:
    if isinstance(v, Mapping):
        for k, x in v.items():
            origins[f"{path}.{k}"] = source
            _mark(x, f"{path}.{k}", source, origins)
    elif isinstance(v, list):
        for i, x in enumerate(v):
            origins[f"{path}[{i}]"] = source
            _mark(x, f"{path}[{i}]", source, origins)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("file not found", source=str(path)) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", source=str(path)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"invalid TOML: {e}", source=str(path)) from None


def dropin_dir(main: Path) -> Path:
    return main.with_name(main.stem + ".d") if main.suffix else main.parent / "agent.d"


def load(path: Path | str | None = None, *, dropins: bool = True, lean: bool = False) -> AgentConfig:
    """Load and validate; raises ConfigError naming the file and key path (ConfigErrors: all of them). `lean`
    (the daemon): disabled probes keep only their plain values and their modules are unloaded
    (agent/disabled.py)."""
    main = Path(path) if path else DEFAULT_PATH
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    files = [main]
    if dropins:
        d = dropin_dir(main)
        if d.is_dir():
            files += sorted(p for p in d.glob("*.toml") if p.is_file())
    errors: list[ConfigError] = []
    for f in files:
        layer = collecting(errors, lambda f=f: _read_toml(f))  # type: ignore[misc]
        if layer is not None:
            _merge(merged, layer, str(f), origins)

    def build_all() -> AgentConfig:
        return from_mapping(merged, origin=lambda key: _origin_of(key, origins, str(main)),
                            sources=tuple(map(str, files)), lean=lean, require_vehicle=not errors)

    if not errors:
        return build_all()
    # A file did not load: still check the layers that did, so one run names every mistake.
    collecting(errors, build_all)
    raise_collected(errors)
    raise AssertionError("unreachable")


def _origin_of(key: str, origins: Mapping[str, str], default: str) -> str:
    while key:
        if key in origins:
            return origins[key]
        key = key.rsplit(".", 1)[0] if "." in key else ""
    return default


def _probe_configs(names: list[str], probes_data: Mapping[str, Any], org: Origin, errors: list[ConfigError],
                   lean: bool) -> dict[str, Any]:
    """Each probe's Config, built from its table. `lean`: a disabled probe's is replaced by a DisabledProbe and
    its modules unloaded before the next probe's are imported, so start-up holds one probe's settings at a
    time, not all three (issue 13: that peak stayed resident as free pymalloc pools, agent/disabled.py)."""
    probes: dict[str, Any] = {}
    loaded_before = set(sys.modules)
    for name in names:
        table = probes_data.get(name, {})
        if not isinstance(table, Mapping):
            errors.append(ConfigError("expected a table", key=f"probes.{name}", source=org(f"probes.{name}")))
            continue
        built = _probe_config(name, table, org, errors)
        if built is None:
            continue
        if lean and not getattr(built, "enabled", True):
            built = disabled.DisabledProbe(built)  # the last reference to the full Config: unload can free it
            disabled.unload(name, loaded_before)
        probes[name] = built
    return probes


def _probe_config(name: str, table: Mapping[str, Any], org: Origin, errors: list[ConfigError]) -> Any:
    """One probe's Config (None if its table is wrong). A function of its own so that nothing of the probe's
    module stays referenced from a frame once it returns."""
    mod = config.probe_module(name)  # through the module: tests replace it there
    built = collecting(errors, lambda: build(mod.Config, table, path=f"probes.{name}", origin=org))
    if built is None:
        return None
    # Checks beyond structure (a CAN map against its DBC), so --check-config catches what start would.
    check = getattr(mod, "check", None)
    if callable(check):
        try:
            check(built)
        except ConfigError as e:
            errors.extend(ConfigError(x.message, key=x.key, source=x.source or org(x.key)) for x in e.errors)
    return built


def from_mapping(data: Mapping[str, Any], *, origin: Origin | None = None,
                 sources: tuple[str, ...] = (), lean: bool = False, require_vehicle: bool = True) -> AgentConfig:
    """Build and validate; goes on after an error and raises them all (ConfigErrors when several)."""
    org: Origin = origin or (lambda _k: "")
    errors: list[ConfigError] = []
    sections: dict[str, type] = {"vehicle": VehicleConfig, "uplink": UplinkConfig, "spool": SpoolConfig,
                                 "history": HistoryConfig, "control": ControlConfig, "agent": AgentSection,
                                 "blackbox": BlackboxConfig}
    known = (*sections, "probes")
    for key in data:
        if key not in known:
            errors.append(ConfigError(f"unknown section (known: {', '.join(known)})", key=key, source=org(key)))
    probes_data = data.get("probes", {})
    if not isinstance(probes_data, Mapping):
        errors.append(ConfigError("expected a table", key="probes", source=org("probes")))
        probes_data = {}
    names = probe_names()
    for key in probes_data:
        if key not in names:
            errors.append(ConfigError(f"unknown probe (known: {', '.join(names)})", key=f"probes.{key}",
                                      source=org(f"probes.{key}")))
    probes = _probe_configs(names, probes_data, org, errors, lean)

    def section(name: str, cls: type) -> Any:
        table = data.get(name, {})
        if not isinstance(table, Mapping):
            errors.append(ConfigError("expected a table", key=name, source=org(name)))
            return None
        return collecting(errors, lambda: build(cls, table, path=name, origin=org))

    if "vehicle" not in data and require_vehicle:
        errors.append(ConfigError("required section is missing", key="vehicle", source=org("vehicle")))
    parts = {name: section(name, cls) for name, cls in sections.items() if name != "vehicle" or name in data}
    raise_collected(errors)
    if parts.get("vehicle") is None:  # only when a file failed to load (require_vehicle=False)
        raise ConfigError("required section is missing", key="vehicle", source=org("vehicle"))
    return AgentConfig(**parts, probes=MappingProxyType(probes), sources=sources)
