"""A field engineer breaks the config with an edit and reloads: the agent refuses the reload and runs on with
the config it had (its socket included). `icvq` could not read the file to find the socket, fell back to
/run/icvq/control.sock, and every subcommand said "icvq-agent is NOT RUNNING ... but pid N runs with this config
without its control socket" (exit 3) about an agent that was running and answering on its socket."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from agentproc import AgentProc, base_config, write_config
from broker import free_port
from fieldkit import cli


def test_a_refused_reload_does_not_hide_the_running_agent(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    cfg = base_config(tmp_path, free_port(), blackbox={"enabled": False}, probes__system={"enabled": False},
                      control={"socket": str(tmp_path / "run" / "ctl.sock"), "group": ""})
    conf = write_config(tmp_path, cfg)
    agent = AgentProc(conf, tmp_path / "agent.log").start()
    try:
        conf.write_text(conf.read_text() + "\noops = [\n")       # the broken edit
        assert agent.proc is not None
        agent.proc.send_signal(signal.SIGHUP)
        agent.wait_log("reload refused")

        r = cli("-c", str(conf), "status", "--json")
        st = json.loads(r.stdout)
        assert st["agent"] == "running" and st["pid"] == agent.proc.pid, (r.returncode, st)
        assert r.returncode in (0, 1, 6)
        assert "invalid TOML" in st["config"]["file_error"]
        text = cli("-c", str(conf), "status").stdout.decode()
        assert "is RUNNING" in text and "the file on disk does not load" in text, text
        r = cli("-c", str(conf), "events", "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["source"] == "agent", r
        r = cli("-c", str(conf), "flush")
        assert r.returncode == 0 and b"flush requested" in r.stdout, r
    finally:
        agent.stop()


def test_an_agent_whose_socket_cannot_be_found_is_not_said_to_lack_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not root and not the agent's user, the CLI cannot read the agent's fds to find its socket: the line must
    not claim the agent runs without one (it most likely serves it), and must say how to reach it."""
    from agent.fieldcli import client, offline

    monkeypatch.setattr(offline, "running_with", lambda path: [4711])
    ctx = client.Context("/etc/icvq/agent.toml", None, "invalid TOML", client.DEFAULT_SOCKET)
    st = offline.status(ctx, client.Unavailable(f"nothing listens on {client.DEFAULT_SOCKET}"))
    assert st["same_config"] == [4711]
    assert "without its control socket" not in st["reason"] and "--socket" in st["reason"], st["reason"]
