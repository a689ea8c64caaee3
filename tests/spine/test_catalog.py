"""The record catalog (agent/catalog.py) is complete and true: every record name, literal field and drop reason
the code can emit is declared, every switch names a real config key, docs/data-inventory.md is the generated
text, and the human docs mention every record name and drop reason (issue 15)."""

from __future__ import annotations

import re
from pathlib import Path

from test_docs import _keys

from agent import catalog
from agent import config as cfgmod
from agent.catalog_doc import render
from agent.records import Kind, Record
from tools.catalog_scan import scan

REPO = Path(__file__).resolve().parents[2]
FOUND = scan(REPO / "agent")


def test_every_emitted_name_is_declared() -> None:
    missing = {n: sorted(w) for n, w in FOUND.names.items() if catalog.lookup(n) is None}
    assert not missing, f"register these record names in agent/catalog.py: {missing}"


def test_every_literal_kind_is_declared() -> None:
    """`rec.event("x")` where the catalog says x is an episode (or the reverse) is a wrong promise either way."""
    wrong = [f"{n}: {k}" for n, kinds in FOUND.kinds.items() for k in sorted(kinds)
             if (d := catalog.lookup(n)) is not None and k.upper() not in {x.name for x in d.kinds}]
    assert not wrong, f"kinds emitted but not declared in agent/catalog.py: {wrong}"


def test_every_literal_field_is_declared() -> None:
    missing = []
    for name, keys in FOUND.fields.items():
        d = catalog.lookup(name)
        if d is None or d.open_fields:
            continue
        declared = {f.name for f in d.fields}
        missing += [f"{name}.{k}" for k in sorted(keys - declared)]
    assert not missing, f"declare these fields in agent/catalog.py: {missing}"


def test_every_drop_reason_is_declared() -> None:
    missing = {r: sorted(w) for r, w in FOUND.drops.items() if not catalog.drop_pattern_known(r)}
    assert not missing, f"declare these drop reasons in agent/catalog.DROPS: {missing}"


def test_catalog_declares_nothing_the_code_cannot_emit() -> None:
    """A stale entry would promise a record (or a switch for it) that no longer exists."""
    stale = [r.name for r in catalog.RECORDS if r.name not in FOUND.names]
    assert not stale, f"in agent/catalog.py but never emitted: {stale}"
    found = set(FOUND.drops)
    stale_drops = [d.reason for d in catalog.DROPS
                   if d.reason not in found and not any(catalog.drop_pattern_known(f) and
                                                        re.sub(r"<[^>]*>", "<code>", f) == d.reason for f in found)]
    assert not stale_drops, f"drop reasons no code counts: {stale_drops}"


def _config_keys() -> set[str]:
    sections = {"vehicle": cfgmod.VehicleConfig, "uplink": cfgmod.UplinkConfig, "spool": cfgmod.SpoolConfig,
                "history": cfgmod.HistoryConfig, "control": cfgmod.ControlConfig, "agent": cfgmod.AgentSection}
    for name in cfgmod.probe_names():
        sections[f"probes.{name}"] = cfgmod.probe_module(name).Config
    return {k for prefix, cls in sections.items() for k in _keys(cls, prefix)}


def test_every_switch_names_a_real_config_key() -> None:
    keys = _config_keys()
    texts = [r.switch for r in catalog.RECORDS] + [f.switch for r in catalog.RECORDS for f in r.fields] + \
        [w.switch for w in catalog.WIRE]
    named = {m for t in texts for m in re.findall(r"\b(?:probes|vehicle|uplink|agent|spool)\.[a-z_.]*[a-z_]", t)}
    unknown = sorted(n for n in named if n not in keys and not any(k.startswith(n + ".") for k in keys))
    assert not unknown, f"switches that are not config keys: {unknown}"


def test_categories_and_purposes_are_filled_in() -> None:
    for r in catalog.RECORDS:
        assert r.purpose and r.switch and r.kinds, r.name
        assert r.fields or r.value or r.open_fields, f"{r.name}: no fields, value or open_fields"
        for f in r.fields:
            assert f.category in catalog.CATEGORIES, (r.name, f.name)
    assert len({r.name for r in catalog.RECORDS}) == len(catalog.RECORDS), "duplicate record names"


def test_positions_are_sensitive() -> None:
    loss = catalog.lookup("link.loss")
    assert loss is not None and loss.category == catalog.SENSITIVE
    for name in ("entry.lat", "entry.lon", "exit.lat", "exit.lon"):
        f = loss.field(name)
        assert f is not None and f.category == catalog.SENSITIVE


def test_undeclared_checks_live_records() -> None:
    def rec(kind: Kind, name: str, data: object) -> Record:
        return Record(kind, name, 0, 0, "b", True, data)  # type: ignore[arg-type]

    assert catalog.undeclared(rec(Kind.HEALTH, "agent.spool", {"records": 1, "bytes": 2})) == []
    assert catalog.undeclared(rec(Kind.HEALTH, "agent.spool", {"secret": 1})) == ["agent.spool.secret"]
    assert catalog.undeclared(rec(Kind.EVENT, "agent.spool", {})) == ["agent.spool: kind event"]
    assert catalog.undeclared(rec(Kind.EVENT, "nobody.knows", {})) == ["record name 'nobody.knows'"]
    assert catalog.undeclared(rec(Kind.METRIC, "system.load1", 0.5)) == []
    assert catalog.undeclared(rec(Kind.HEALTH, "agent.drops",
                                  {"spool_full.incoming": 1, "rejected.0x97": 2})) == []
    assert catalog.undeclared(rec(Kind.HEALTH, "agent.drops", {"lost_somehow": 1})) == ["agent.drops.lost_somehow"]


def test_data_inventory_doc_is_generated() -> None:
    doc = (REPO / "docs" / "data-inventory.md").read_text()
    assert doc == render(), "docs/data-inventory.md is stale: run `python -m agent.catalog --write`"


def _human_docs() -> str:
    """Every doc a person writes (the generated inventory would make this test trivially true)."""
    paths = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    return "\n".join(p.read_text() for p in paths if p.name != "data-inventory.md")


def test_human_docs_mention_every_record_name_and_drop_reason() -> None:
    """Issue 15: a record or drop reason the docs never mention is one nobody can interpret in the field."""
    text = _human_docs()
    names = [n for n in sorted(FOUND.names) if f"`{n}`" not in text]
    drops = [d.reason for d in catalog.DROPS if f"`{d.reason}`" not in text]
    assert not names, f"no doc mentions these record names (in backticks): {names}"
    assert not drops, f"no doc mentions these drop reasons (in backticks): {drops}"
