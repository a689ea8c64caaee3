"""The CLI's surface without an agent: help and exit codes on every subcommand, `-c` before and after the
subcommand, every config error in one `check-config` run, and one-line errors (no traceback) for missing files."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from agentproc import base_config, to_toml
from fieldkit import cli

from agent.cli import parser


def test_every_option_has_help_and_every_subcommand_lists_exit_codes() -> None:
    ap, handlers = parser()
    subs = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subs.choices) == set(handlers)
    for name, p in [("icvq", ap), *subs.choices.items()]:
        assert "exit status:" in (p.epilog or "") and "5   agent HUNG" in (p.epilog or ""), name
        for a in p._actions:
            if isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert a.help and a.help != argparse.SUPPRESS, f"icvq {name} {a.option_strings or a.dest}: no help"
        assert "exit status:" in p.format_help(), name


def test_config_before_or_after_the_subcommand(tmp_path: Path) -> None:
    conf = tmp_path / "agent.toml"
    conf.write_text(to_toml(base_config(tmp_path, 1883)))
    for argv in (["-c", str(conf), "status", "--json"], ["status", "-c", str(conf), "--json"],
                 ["--config", str(conf), "status", "--json"]):
        r = cli(*argv, env={"ICVQ_CONFIG": "/nonexistent.toml"})
        st = json.loads(r.stdout)
        assert r.returncode == 3 and st["agent"] == "not_running", (argv, r.stderr)
        assert st["config"]["path"] == str(conf) and st["vehicle"]["id"] == "VIN0001", argv
    assert cli("-c", str(conf), "check-config").returncode == 0
    assert cli("check-config", "-c", str(conf)).returncode == 0


def test_check_config_reports_every_error_in_one_run(tmp_path: Path) -> None:
    cfg = base_config(tmp_path, 0, uplink={"bogus": 1}, spool={"max_mib": "big"}, probes__system={"interval_s": -1})
    cfg["nonsense"] = {"a": 1}
    conf = tmp_path / "agent.toml"
    conf.write_text(to_toml(cfg))
    (tmp_path / "agent.d").mkdir()
    (tmp_path / "agent.d" / "10-broken.toml").write_text("x = [\n")
    want = {("agent.d/10-broken.toml", ""), ("agent.toml", "nonsense"), ("agent.toml", "uplink.port"),
            ("agent.toml", "uplink.bogus"), ("agent.toml", "spool.max_mib"),
            ("agent.toml", "probes.system.interval_s")}

    r = cli("check-config", "--json", "-c", str(conf))
    assert r.returncode == 78 and r.stderr == b""
    out = json.loads(r.stdout)
    assert out["ok"] is False
    assert {(str(Path(e["source"]).relative_to(tmp_path)), e["key"]) for e in out["errors"]} == want
    assert all(e["message"] and e["text"].startswith(e["source"]) for e in out["errors"])

    r = cli("check-config", "-c", str(conf))
    lines = r.stderr.decode().splitlines()
    assert r.returncode == 78 and r.stdout == b""
    assert len(lines) == len(want) + 1 and lines[-1] == f"icvq: {len(want)} errors in {conf}"
    assert all(ln.startswith("icvq: config error: ") for ln in lines[:-1])

    # The daemon's own check says the same.
    d = subprocess.run([sys.executable, "-m", "agent", "--check-config", "-c", str(conf)], capture_output=True)
    assert d.returncode == 78 and d.stderr.decode().count(str(tmp_path)) >= len(want)


def test_missing_or_unreadable_files_end_in_one_line(tmp_path: Path) -> None:
    for argv, code in ((["decode", str(tmp_path / "missing.msgpack")], 66),
                       (["decode", str(tmp_path)], 66),
                       (["inspect", str(tmp_path / "missing.tgz")], 66),
                       (["dump", "-c", str(tmp_path / "none.toml"), "-o", str(tmp_path / "no" / "dir.tgz")], 74)):
        r = cli(*argv)
        err = r.stderr.decode()
        assert r.returncode == code, (argv, err)
        assert "Traceback" not in err and err.startswith("icvq: ") and err.count("\n") == 1, (argv, err)
