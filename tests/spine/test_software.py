"""Software identity for OTA consistency (agent/software.py): versions and SWINs read from files or commands,
never from an ECU; bad sources are left out, never fatal."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.config import from_mapping
from agent.errors import ConfigError
from agent.inventory import inventory
from agent.software import SoftwareSource, clean, read


def test_file_and_command_override_the_configured_version(tmp_path: Path) -> None:
    (tmp_path / "version").write_text("3.2.2\n")
    (tmp_path / "swin").write_text("HMI-SW-0302-A7\nignored\n")
    calls: list[tuple[str, ...]] = []

    def run(argv: tuple[str, ...], timeout_s: float) -> str:
        calls.append(argv)
        return "MDM-SWIN-11\n"

    versions, swins = read({"hmi": "3.2.1", "modem": "1.0"}, {
        "hmi": SoftwareSource(version_file=str(tmp_path / "version"), swin_file=str(tmp_path / "swin")),
        "modem": SoftwareSource(swin_command=("/usr/bin/modem-info", "--swin")),
    }, run=run)
    assert versions == {"hmi": "3.2.2", "modem": "1.0"}
    assert swins == {"hmi": "HMI-SW-0302-A7", "modem": "MDM-SWIN-11"}
    assert calls == [("/usr/bin/modem-info", "--swin")]


def test_a_failing_source_is_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def run(argv: tuple[str, ...], timeout_s: float) -> str:
        raise subprocess.TimeoutExpired(list(argv), timeout_s)

    versions, swins = read({"hmi": "3.2.1"}, {
        "hmi": SoftwareSource(version_file=str(tmp_path / "missing"), swin_command=("/bin/slow",)),
    }, run=run)
    assert versions == {"hmi": "3.2.1"} and swins == {}
    assert "cannot read its version" in caplog.text and "cannot read its SWIN" in caplog.text


@pytest.mark.parametrize(("text", "want"), [("A1\n", "A1"), ("  A1  \nB", "A1"), ("", None), ("\x00bad", None),
                                            ("x" * 129, None), ("x" * 128, "x" * 128)])
def test_values_are_one_printable_line(text: str, want: str | None) -> None:
    assert clean(text) == want


def test_the_real_command_runner(tmp_path: Path) -> None:
    """A real process: the first stdout line; argv only, no shell."""
    _, swins = read({}, {"hmi": SoftwareSource(swin_command=("/bin/echo", "SWIN-1;", "echo", "no-shell"))})
    assert swins == {"hmi": "SWIN-1; echo no-shell"}


@pytest.mark.parametrize(("table", "message"), [
    ({"swin_file": "swin.txt"}, "absolute path"),
    ({"swin_command": ["modem-info"]}, "absolute path"),
    ({"version_file": "/a", "version_command": ["/b"]}, "not both"),
])
def test_bad_sources_are_config_errors(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        from_mapping({"vehicle": {"id": "V", "device": "hu", "fleet": "f"}, "agent": {"software": {"hmi": table}}})
    assert str(e.value.key).startswith("agent.software.hmi.")


def test_birth_inventory_carries_swins_only_when_there_are_some() -> None:
    assert "swin" not in inventory({"hmi": "3.2.1"})
    inv = inventory({"hmi": "3.2.1"}, {"hmi": "HMI-SW-0302-A7"})
    assert inv["components"] == {"hmi": "3.2.1"} and inv["swin"] == {"hmi": "HMI-SW-0302-A7"}
