"""Docs that make promises are checked: the wire-format doc's golden vectors, the sample config's keys."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

from agent import config as cfgmod

REPO = Path(__file__).resolve().parents[2]


def _hex_blocks(text: str) -> list[bytes]:
    return [bytes.fromhex(b.replace("\n", " ")) for b in re.findall(r"```hex\n(.*?)```", text, re.S)]


def test_wire_doc_vectors_match_golden_files() -> None:
    doc = (REPO / "docs" / "wire-format.md").read_text()
    blocks = _hex_blocks(doc)
    assert blocks[0] == (REPO / "tests/golden/batch_small.msgpack").read_bytes()
    assert blocks[1] == (REPO / "tests/golden/status_death.msgpack").read_bytes()
    assert blocks[2] == (REPO / "tests/golden/batch_event.msgpack").read_bytes()


def _keys(cls: type, prefix: str) -> list[str]:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else tp
        if dataclasses.is_dataclass(inner) and isinstance(inner, type):
            out += _keys(inner, f"{prefix}.{f.name}")
        else:
            out.append(f"{prefix}.{f.name}")
    return out


def test_sample_config_documents_every_key() -> None:
    """config/agent.toml is the reference: every key the agent accepts appears there (set or commented)."""
    text = (REPO / "config" / "agent.toml").read_text()
    sections = {"vehicle": cfgmod.VehicleConfig, "uplink": cfgmod.UplinkConfig, "spool": cfgmod.SpoolConfig,
                "history": cfgmod.HistoryConfig, "control": cfgmod.ControlConfig, "agent": cfgmod.AgentSection}
    for name in cfgmod.probe_names():
        sections[f"probes.{name}"] = cfgmod.probe_module(name).Config
    missing = []
    for prefix, cls in sections.items():
        for key in _keys(cls, prefix):
            leaf = key.rsplit(".", 1)[1]
            if not re.search(rf"^#?\s*{re.escape(leaf)}\s*=", text, re.M):
                missing.append(key)
    assert not missing, f"config/agent.toml does not document: {missing}"


def test_sample_config_includes_every_probe_sample() -> None:
    from tools import config_sample

    assert (REPO / "config" / "agent.toml").read_text() == config_sample.render(), \
        "config/agent.toml is stale: run `python -m tools.config_sample`"
