"""The Buildroot external tree in buildroot/: consistency and lint.

Two kinds of checks, all pure (no Buildroot checkout, no network):

* consistency with pyproject.toml and systemd/: version, build backend vs
  SETUP_TYPE and host dependency, every runtime dependency selected, the
  files the package installs exist, the user matches the unit;
* the rules of Buildroot's utils/check-package that can be checked here:
  .mk header, tabs, variable prefixes, Config.in attribute order and help
  format, .hash fields, external tree files, trailing whitespace.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
TREE = REPO / "buildroot"
PKG = TREE / "package" / "icvq-agent"
MK = PKG / "icvq-agent.mk"
CONFIG_IN = PKG / "Config.in"
HASH = PKG / "icvq-agent.hash"
DEFCONFIG = TREE / "configs" / "icvq_qemu_aarch64_virt_defconfig"
PREFIX = "ICVQ_AGENT"

# Oldest python3 in the Buildroot branches the tree targets (2025.02 has
# 3.12; 2026.02 and master have 3.14): environment markers are evaluated
# against it.
BUILDROOT_MIN_PYTHON = (3, 12)

# pyproject build-backend -> (<PKG>_SETUP_TYPE, host package it needs)
BACKENDS = {
    "hatchling.build": ("hatch", "host-python-hatchling"),
    "setuptools.build_meta": ("setuptools", "host-python-setuptools"),
    "flit_core.buildapi": ("flit", "host-python-flit-core"),
    "poetry.core.masonry.api": ("poetry", "host-python-poetry-core"),
    "maturin": ("maturin", "host-python-maturin"),
}

# Kconfig entries that start a new block (never indented, end a help text).
KCONFIG_TOP_LEVEL = {
    "config",
    "comment",
    "menu",
    "endmenu",
    "if",
    "endif",
    "choice",
    "endchoice",
    "source",
    "menuconfig",
}

# Standard-library modules the agent needs that Buildroot builds as options.
STDLIB_OPTIONS = {
    "BR2_PACKAGE_PYTHON3_SSL": "ssl (MQTT over TLS)",
    "BR2_PACKAGE_PYTHON3_SQLITE": "sqlite3 (spool)",
}


# --- parsing helpers ------------------------------------------------------------


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined (as make reads them)."""
    out, buf = [], ""
    for line in text.splitlines():
        if line.endswith("\\"):
            buf += line[:-1].strip() + " "
            continue
        out.append(buf + line.strip() if buf else line)
        buf = ""
    return out


def mk_variables(text: str) -> dict[str, str]:
    """Assignments outside define blocks, continuation lines joined."""
    variables: dict[str, str] = {}
    in_define = False
    for line in logical_lines(text):
        if line.startswith("define "):
            in_define = True
            continue
        if line.startswith("endef"):
            in_define = False
            continue
        m = re.match(r"^([A-Z0-9_]+)\s*(\+=|:=|\?=|=)\s*(.*)$", line)
        if m and not in_define:
            name, op, value = m.groups()
            variables[name] = f"{variables.get(name, '')} {value}".strip() if op == "+=" else value.strip()
    return variables


def mk_defines(text: str) -> dict[str, list[str]]:
    defines: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("define "):
            current = line.split()[1]
            defines[current] = []
        elif line.startswith("endef"):
            current = None
        elif current is not None:
            defines[current].append(line)
    return defines


def kconfig_selects(text: str) -> dict[str, str]:
    """select SYMBOL -> its condition ('' if unconditional)."""
    selects = {}
    for line in logical_lines(text):
        m = re.match(r"^\s*select\s+(\w+)(?:\s+if\s+([^#]+))?", line)
        if m:
            selects[m.group(1)] = (m.group(2) or "").strip()
    return selects


def defconfig() -> dict[str, str]:
    values = {}
    for line in DEFCONFIG.read_text().splitlines():
        m = re.match(r"^(BR2_\w+)=(.*)$", line)
        if m:
            values[m.group(1)] = m.group(2).strip('"')
        m = re.match(r"^# (BR2_\w+) is not set$", line)
        if m:
            values[m.group(1)] = "n"
    return values


def external_path(value: str) -> Path:
    return Path(value.replace("$(BR2_EXTERNAL_ICVQ_PATH)", str(TREE)))


def marker_applies(marker: str, version: tuple[int, int]) -> bool:
    """Evaluate the simple markers pyproject uses: python_version <op> 'X.Y'."""
    m = re.fullmatch(r"\s*python_version\s*(<=|>=|<|>|==|!=)\s*['\"](\d+)\.(\d+)['\"]\s*", marker)
    assert m, f"marker {marker!r} not understood: extend marker_applies() in {Path(__file__).name}"
    op, other = m.group(1), (int(m.group(2)), int(m.group(3)))
    return {
        "<": version < other,
        "<=": version <= other,
        ">": version > other,
        ">=": version >= other,
        "==": version == other,
        "!=": version != other,
    }[op]


def br2_symbol(requirement: str) -> tuple[str, str | None]:
    """PyPI requirement -> (Buildroot symbol, marker or None).

    Buildroot names Python packages python-<name>, dropping a leading
    python- from the PyPI name (python-can -> python-can, psutil ->
    python-psutil, paho-mqtt -> python-paho-mqtt).
    """
    spec, _, marker = requirement.partition(";")
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec).group(1)
    name = re.sub(r"[._-]+", "-", name).lower().removeprefix("python-")
    return "BR2_PACKAGE_PYTHON_" + name.upper().replace("-", "_"), (marker.strip() or None)


def tree_text_files() -> list[Path]:
    return sorted(p for p in TREE.rglob("*") if p.is_file() and not p.is_symlink())


# --- consistency with pyproject.toml -----------------------------------------------


def test_version_matches_pyproject():
    mk = mk_variables(MK.read_text())
    want = pyproject()["project"]["version"]
    assert mk.get(f"{PREFIX}_VERSION") == want, f"{PREFIX}_VERSION={mk.get(f'{PREFIX}_VERSION')}, pyproject {want}"


def test_setup_type_matches_build_backend():
    backend = pyproject()["build-system"]["build-backend"]
    assert backend in BACKENDS, f"build backend {backend} has no Buildroot SETUP_TYPE mapping in this test"
    setup_type, host_dep = BACKENDS[backend]
    mk = mk_variables(MK.read_text())
    assert mk.get(f"{PREFIX}_SETUP_TYPE") == setup_type, (
        f"{PREFIX}_SETUP_TYPE={mk.get(f'{PREFIX}_SETUP_TYPE')}, backend {backend} needs {setup_type}"
    )
    deps = mk.get(f"{PREFIX}_DEPENDENCIES", "").split()
    assert host_dep in deps, f"builds run 'python -m build -n' (no isolation): {host_dep} must be in DEPENDENCIES"


def test_every_runtime_dependency_is_selected():
    selects = kconfig_selects(CONFIG_IN.read_text())
    missing = []
    for requirement in pyproject()["project"]["dependencies"]:
        symbol, marker = br2_symbol(requirement)
        if marker and not marker_applies(marker, BUILDROOT_MIN_PYTHON):
            continue  # e.g. tomli only below 3.11
        if symbol not in selects:
            missing.append(f"{requirement} -> select {symbol}")
        elif selects[symbol]:
            missing.append(f"{requirement} -> {symbol} is only selected if {selects[symbol]}")
    assert not missing, "runtime dependencies not selected in Config.in:\n" + "\n".join(missing)


def test_stdlib_modules_are_selected():
    selects = kconfig_selects(CONFIG_IN.read_text())
    for symbol, why in STDLIB_OPTIONS.items():
        assert symbol in selects, f"Config.in must select {symbol}: {why}"


def test_package_depends_on_python3():
    text = CONFIG_IN.read_text()
    assert re.search(r"^\tdepends on BR2_PACKAGE_PYTHON3\b", text, re.M), "Config.in: depends on BR2_PACKAGE_PYTHON3"


def test_license_matches_pyproject():
    mk = mk_variables(MK.read_text())
    license_ = pyproject()["project"]["license"]
    want = license_["text"] if isinstance(license_, dict) else license_
    assert mk.get(f"{PREFIX}_LICENSE") == want
    for name in mk.get(f"{PREFIX}_LICENSE_FILES", "").split():
        assert (REPO / name).is_file(), f"license file {name} missing at the repository root"


def test_site_is_the_repository():
    mk = mk_variables(MK.read_text())
    assert mk.get(f"{PREFIX}_SITE_METHOD") == "local"
    site = external_path(mk.get(f"{PREFIX}_SITE", "")).resolve()
    assert site == REPO, f"{PREFIX}_SITE resolves to {site}, not the repository root {REPO}"


def test_installed_files_exist():
    """Every $(@D)/<path> the .mk installs is in the repository."""
    sources = re.findall(r"\$\(@D\)/(\S+)", MK.read_text())
    assert sources, "no $(@D)/... sources found in the .mk"
    missing = [s for s in sources if not (REPO / s).is_file()]
    assert not missing, f"files the package installs are missing from the repository: {missing}"


def test_systemd_install_paths():
    body = "\n".join(mk_defines(MK.read_text()).get(f"{PREFIX}_INSTALL_INIT_SYSTEMD", []))
    for target in (
        "$(TARGET_DIR)/usr/lib/systemd/system/icvq-agent.service",
        "$(TARGET_DIR)/usr/lib/sysusers.d/icvq.conf",
        "$(TARGET_DIR)/usr/lib/tmpfiles.d/icvq.conf",
    ):
        assert target in body, f"{PREFIX}_INSTALL_INIT_SYSTEMD does not install {target}"


def test_config_installed_by_post_install_hook():
    text = MK.read_text()
    hooks = mk_variables(text).get(f"{PREFIX}_POST_INSTALL_TARGET_HOOKS", "").split()
    bodies = mk_defines(text)
    assert any("/etc/icvq/agent.toml" in "\n".join(bodies.get(h, [])) for h in hooks), (
        "no POST_INSTALL_TARGET_HOOKS entry installs /etc/icvq/agent.toml"
    )


def test_users_line_matches_unit_and_sysusers():
    lines = [line.strip() for line in mk_defines(MK.read_text()).get(f"{PREFIX}_USERS", []) if line.strip()]
    assert len(lines) == 1, f"{PREFIX}_USERS should define exactly one user, got {lines}"
    fields = lines[0].split()
    assert len(fields) >= 9, (
        f"USERS line needs 9 fields (name uid group gid password home shell groups comment): {fields}"
    )
    name, uid, group, gid, password, home, shell, groups = fields[:8]
    unit = (REPO / "systemd" / "icvq-agent.service").read_text()
    assert f"\nUser={name}\n" in unit and f"\nGroup={group}\n" in unit, "USERS name/group differ from the unit"
    assert (uid, gid) == ("-1", "-1"), "let Buildroot pick system ids (-1)"
    assert password == "*", "the service user must not be able to log in"
    assert home == "/var/lib/icvq" and shell == "-"
    supplementary = re.search(r"^SupplementaryGroups=(.*)$", unit, re.M).group(1).split()
    assert sorted(groups.split(",")) == sorted(supplementary), "USERS groups differ from SupplementaryGroups="
    sysusers = (REPO / "systemd" / "icvq.sysusers").read_text()
    members = sorted(line.split()[2] for line in sysusers.splitlines() if line.startswith("m "))
    assert sorted(groups.split(",")) == members, "USERS groups differ from icvq.sysusers m-lines"


# --- the reference defconfig and board files -------------------------------------------


def test_defconfig_builds_the_agent_on_systemd():
    cfg = defconfig()
    for symbol in (
        "BR2_aarch64",
        "BR2_INIT_SYSTEMD",
        "BR2_PACKAGE_PYTHON3",
        "BR2_PACKAGE_ICVQ_AGENT",
        "BR2_PACKAGE_LIBSECCOMP",
        "BR2_DOWNLOAD_FORCE_CHECK_HASHES",
    ):
        assert cfg.get(symbol) == "y", f"{DEFCONFIG.name}: {symbol}=y missing"
    assert cfg.get("BR2_TOOLCHAIN_BUILDROOT_GLIBC") == "y", "systemd needs a glibc toolchain"


def test_defconfig_paths_exist():
    cfg = defconfig()
    for symbol in (
        "BR2_ROOTFS_OVERLAY",
        "BR2_ROOTFS_POST_IMAGE_SCRIPT",
        "BR2_LINUX_KERNEL_CONFIG_FRAGMENT_FILES",
    ):
        assert symbol in cfg, f"{DEFCONFIG.name}: {symbol} missing"
        for part in cfg[symbol].split():
            path = external_path(part)
            assert "$(BR2_EXTERNAL_ICVQ_PATH)" in part, f"{symbol}: use $(BR2_EXTERNAL_ICVQ_PATH), not {part}"
            assert path.exists(), f"{symbol}: {path} does not exist"
    script = external_path(cfg["BR2_ROOTFS_POST_IMAGE_SCRIPT"])
    assert os.access(script, os.X_OK), f"{script} must be executable"


def test_spool_is_on_persistent_storage():
    """Read-only root means /var is a tmpfs: something must mount /var/lib/icvq."""
    cfg = defconfig()
    if cfg.get("BR2_TARGET_GENERIC_REMOUNT_ROOTFS_RW") == "y":
        pytest.fail("the reference image keeps the root read-only; update this test if that changes")
    overlay = external_path(cfg["BR2_ROOTFS_OVERLAY"])
    mounts = [p for p in overlay.rglob("*.mount") if re.search(r"^Where=/var/lib/icvq$", p.read_text(), re.M)]
    assert mounts, f"no mount unit for /var/lib/icvq in {overlay}"
    assert all(p.name == "var-lib-icvq.mount" for p in mounts), "a mount unit must be named after its path"
    presets = "".join(p.read_text() for p in overlay.rglob("*.preset"))
    assert "enable var-lib-icvq.mount" in presets, "the data mount is not enabled by a preset"


# --- external tree files ---------------------------------------------------------------


def test_external_desc():
    fields = dict(line.split(":", 1) for line in (TREE / "external.desc").read_text().splitlines() if line)
    assert fields.get("name", "").strip() == "ICVQ", "external.desc: name: ICVQ (defines BR2_EXTERNAL_ICVQ_PATH)"
    assert re.fullmatch(r"[A-Za-z0-9_]+", fields["name"].strip()), "name may only use [A-Za-z0-9_]"
    assert fields.get("desc", "").strip(), "external.desc: desc: missing"
    assert set(fields) <= {"name", "desc"}, f"unknown external.desc fields: {set(fields) - {'name', 'desc'}}"


def test_external_mk_includes_every_package():
    want = "include $(sort $(wildcard $(BR2_EXTERNAL_ICVQ_PATH)/package/*/*.mk))"
    assert (TREE / "external.mk").read_text().strip() == want


def test_external_config_in_sources_every_package():
    sourced = re.findall(
        r'^source "\$BR2_EXTERNAL_ICVQ_PATH/(package/[^"]+/Config.in)"$', (TREE / "Config.in").read_text(), re.M
    )
    packages = sorted(str(p.relative_to(TREE)) for p in (TREE / "package").glob("*/Config.in"))
    assert sorted(sourced) == packages, f"Config.in sources {sourced}, packages are {packages}"


def test_each_package_has_its_three_files():
    for pkg in (TREE / "package").iterdir():
        for name in ("Config.in", f"{pkg.name}.mk", f"{pkg.name}.hash"):
            assert (pkg / name).is_file(), f"{pkg.name}: {name} missing"


# --- check-package rules: .mk --------------------------------------------------------------


def test_mk_header():
    lines = MK.read_text().splitlines()
    want = ["#" * 80, "#", "# icvq-agent", "#", "#" * 80, ""]
    assert lines[:6] == want, "the .mk must start with the 80-hash header block naming the package:\n" + "\n".join(want)


def test_mk_variable_prefix():
    bad = []
    for lineno, line in enumerate(MK.read_text().splitlines(), 1):
        m = re.match(r"^(?:define\s+)?([A-Z0-9_]+_[A-Z0-9_]+)", line)
        if m and not re.match(rf"^(HOST_)?{PREFIX}_", m.group(1)):
            bad.append(f"{lineno}: {m.group(1)}")
    assert not bad, f"variables must start with {PREFIX}_:\n" + "\n".join(bad)


def test_mk_indentation():
    """Tabs inside define/endef and on continuation lines, nowhere else."""
    bad = []
    in_define = continuation = False
    for lineno, line in enumerate(MK.read_text().splitlines(), 1):
        if line.startswith("define "):
            in_define = True
        elif line.startswith("endef"):
            in_define = False
        elif line.strip() and not line.lstrip().startswith("#"):
            want_tab = in_define or continuation
            if want_tab != line.startswith("\t"):
                bad.append(f"{lineno}: {'expected' if want_tab else 'unexpected'} tab indent: {line!r}")
        continuation = line.endswith("\\") and not line.startswith("#")
        if re.search(r"(  |\t ?)\\$", line):
            bad.append(f"{lineno}: use exactly one space before the backslash")
    assert not bad, "\n".join(bad)


def test_mk_ends_with_python_package_eval():
    lines = [line for line in MK.read_text().splitlines() if line.strip()]
    assert lines[-1] == "$(eval $(python-package))"


def test_mk_no_useless_or_default_values():
    text = MK.read_text()
    for pattern in (r"_INSTALL_TARGET\s*=\s*YES", r"_INSTALL_STAGING\s*=\s*NO", r"_SOURCE\s*=\s*icvq-agent-\$"):
        assert not re.search(pattern, text), f"useless default value matching {pattern}"
    assert not re.search(r"[^$]\$\{\w+\}", text), "use $() to delimit variables, not ${}"


# --- check-package rules: Config.in ----------------------------------------------------------


def test_config_in_indentation_and_order():
    order = {"bool": 1, "prompt": 1, "string": 1, "default": 2, "depends": 3, "select": 4, "help": 5}
    bad = []
    state = 0
    continuation = in_help = False
    for lineno, line in enumerate(CONFIG_IN.read_text().splitlines(), 1):
        if not line.strip() or line.strip().startswith("#"):
            continuation = False
            continue
        if in_help and line.startswith("\t  "):
            continue
        in_help = False
        if continuation:
            if not line.startswith("\t"):
                bad.append(f"{lineno}: continuation line must be indented with tabs")
            continuation = line.endswith("\\")
            continue
        continuation = line.endswith("\\")
        word = line.split()[0]
        if word in KCONFIG_TOP_LEVEL:
            state = 0
            if line[0].isspace():
                bad.append(f"{lineno}: '{word}' must not be indented")
            continue
        if word in order:
            if not line.startswith(f"\t{word}"):
                bad.append(f"{lineno}: '{word}' must be indented with one tab")
            if order[word] < state:
                bad.append(f"{lineno}: attribute order is type, default, depends on, select, help")
            state = order[word]
            in_help = word == "help"
    assert not bad, "\n".join(bad)


def test_config_in_help_text_format():
    """<tab><2 spaces><at most 62 characters>, first line not indented further."""
    bad = []
    in_help = first = False
    for lineno, line in enumerate(CONFIG_IN.read_text().splitlines(), 1):
        if line.strip() == "help":
            in_help = first = True
            continue
        if not in_help or not line.strip() or line.strip().startswith("#"):
            continue
        if line.split()[0] in KCONFIG_TOP_LEVEL:
            in_help = False  # the next entry ends the help text
            continue
        pattern = r"^\t  \S.{0,61}$" if first else r"^\t  .{0,62}$"
        first = False
        if not re.match(pattern, line) and not re.match(r"^\t  (http|https|git)://\S*$", line):
            bad.append(f"{lineno}: {line!r}")
    assert not bad, "help text must be <tab><2 spaces><at most 62 chars>:\n" + "\n".join(bad)


def test_config_in_no_default_n():
    assert not re.search(r"^\tdefault n$", CONFIG_IN.read_text(), re.M), "booleans default to n already"


# --- check-package rules: .hash ---------------------------------------------------------------


def test_hash_lines():
    lengths = {"md5": 32, "sha1": 40, "sha224": 56, "sha256": 64, "sha384": 96, "sha512": 128}
    lines = HASH.read_text().splitlines()
    assert lines[0] == "# Locally computed", "first line: '# Locally computed'"
    entries = [line for line in lines if line.strip() and not line.startswith("#")]
    assert entries, "no hash lines"
    for line in entries:
        fields = line.split()
        assert len(fields) == 3, f"expected three fields: {line!r}"
        kind, digest, name = fields
        assert kind in lengths, f"unexpected hash type {kind}"
        assert re.fullmatch(rf"[0-9a-f]{{{lengths[kind]}}}", digest), f"{kind} needs {lengths[kind]} hex digits"
        assert line == f"{kind}  {digest}  {name}", f"fields must be separated by two spaces: {line!r}"


def test_hash_covers_license_files_with_the_real_digest():
    mk = mk_variables(MK.read_text())
    entries = {line.split()[2]: line.split()[1] for line in HASH.read_text().splitlines() if line.startswith("sha256 ")}
    for name in mk.get(f"{PREFIX}_LICENSE_FILES", "").split():
        assert name in entries, f"{HASH.name} has no sha256 line for {name}"
        actual = hashlib.sha256((REPO / name).read_bytes()).hexdigest()
        assert entries[name] == actual, f"{name}: hash file says {entries[name]}, file is {actual}"


# --- check-package rules: every file ---------------------------------------------------------


@pytest.mark.parametrize("path", tree_text_files(), ids=lambda p: str(p.relative_to(TREE)))
def test_whitespace(path):
    text = path.read_text()
    lines = text.splitlines()
    trailing = [n for n, line in enumerate(lines, 1) if line != line.rstrip()]
    assert not trailing, f"trailing whitespace on lines {trailing}"
    assert text.endswith("\n") and not text.endswith("\n\n"), "exactly one newline at the end of the file"
    doubled = [n for n in range(2, len(lines) + 1) if not lines[n - 1].strip() and not lines[n - 2].strip()]
    if path.suffix in {".mk", ".in", ".hash"} or path.name == "Config.in":
        assert not doubled, f"consecutive empty lines at {doubled}"


@pytest.mark.parametrize(
    "path", [MK, CONFIG_IN, HASH, TREE / "Config.in", TREE / "external.mk", TREE / "external.desc"]
)
def test_not_executable(path):
    assert not os.access(path, os.X_OK), f"{path.name} must not be executable"
