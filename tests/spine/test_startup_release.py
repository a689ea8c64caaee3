"""The real daemon process holds nothing of the code only start-up runs (issue 13: idle RSS): once started it
has released the config loader, tomllib and the fleet-key reader (agent/__main__.py, config.STARTUP_MODULES),
a SIGHUP reload imports them again, works, and releases them again, and `--check-config` still works. Fresh
processes, run as `python -m agent` is, so no test's imports count."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agentproc import REPO, NotifySocket, base_config, to_toml, write_config

# `python -m agent` with a SIGUSR1 handler that writes what is still loaded, or still alive without being
# loaded (a function or class of a released module that something kept: a second copy on the next import).
RUNNER = """
import gc, json, os, runpy, signal, sys, types
out, conf = sys.argv[1], sys.argv[2]
WATCH = ("agent.config_load", "agent.pseudonym", "tomllib", "pkgutil", "argparse", "gettext")
def dump(*_):
    gc.collect()
    alive = sorted({o.__module__ for o in gc.get_objects()
                    if isinstance(o, (types.FunctionType, type)) and str(o.__module__).startswith(WATCH)})
    loaded = sorted(m for m in sys.modules if m.startswith(WATCH))
    with open(out + ".tmp", "w") as f:
        json.dump({"loaded": loaded, "alive": alive}, f)
    os.replace(out + ".tmp", out)
signal.signal(signal.SIGUSR1, dump)
sys.argv = ["agent", "--config", conf, "--log-level", "debug"]
runpy.run_module("agent", run_name="__main__", alter_sys=True)
"""


def _ask(proc: subprocess.Popen[bytes], out: Path) -> dict[str, list[str]]:
    out.unlink(missing_ok=True)
    proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while not out.exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the agent did not answer"
        time.sleep(0.05)
    return json.loads(out.read_text())


def _wait_log(log: Path, text: str, count: int = 1) -> None:
    deadline = time.monotonic() + 20
    while log.read_text(errors="replace").count(text) < count:
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)


def test_the_idle_daemon_released_start_up_and_a_reload_still_works(tmp_path: Path, broker) -> None:
    conf = write_config(tmp_path, base_config(tmp_path, broker.port))
    ns = NotifySocket(tmp_path / "notify.sock")
    log, out = tmp_path / "agent.log", tmp_path / "modules.json"
    with log.open("ab") as logf:
        proc = subprocess.Popen([sys.executable, "-c", RUNNER, str(out), str(conf)], stdout=logf, stderr=logf,
                                cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), "NOTIFY_SOCKET": str(ns.path)})
    try:
        ns.wait("READY=1")  # after start, so after the release
        assert _ask(proc, out) == {"loaded": [], "alive": []}, "start-up's modules stayed in the idle daemon"

        conf.write_text(to_toml(base_config(tmp_path, broker.port, probes__system={"interval_s": 2.0})))
        proc.send_signal(signal.SIGHUP)
        _wait_log(log, "config reloaded")
        assert _ask(proc, out) == {"loaded": [], "alive": []}, "a reload left the loader loaded"

        conf.write_text(conf.read_text() + "\n[bogus]\nx = 1\n")
        proc.send_signal(signal.SIGHUP)
        _wait_log(log, "reload refused")
        assert "bogus" in log.read_text()
        assert _ask(proc, out) == {"loaded": [], "alive": []}, "a refused reload left the loader loaded"

        conf.write_text(to_toml(base_config(tmp_path, broker.port, probes__system={"interval_s": 1.0})))
        proc.send_signal(signal.SIGHUP)
        _wait_log(log, "config reloaded", 2)  # the loader imported a second time works as the first
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        ns.close()


def test_check_config_and_a_config_error(tmp_path: Path) -> None:
    conf = write_config(tmp_path, base_config(tmp_path, 1883))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    ok = subprocess.run([sys.executable, "-m", "agent", "--check-config", "-c", str(conf)], cwd=REPO, env=env,
                        capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("config OK: "), ok
    conf.write_text(conf.read_text().replace("[uplink]\n", "[uplink]\nportt = 1\n", 1))
    for argv in (["--check-config", "-c", str(conf)], ["-c", str(conf)]):
        bad = subprocess.run([sys.executable, "-m", "agent", *argv], cwd=REPO, env=env, capture_output=True,
                             text=True, timeout=30)
        assert bad.returncode == 78 and "uplink.portt" in bad.stderr, bad


def test_release_keeps_what_was_loaded_before() -> None:
    """In-process callers of agent.daemon.main (tests, benchmarks) keep the modules they had imported: only what
    the run imported itself is released."""
    script = """
import sys
import agent
import agent.config as config
import agent.pseudonym
before = set(sys.modules)
load = config.load  # imports agent.config_load and tomllib
assert "agent.config_load" in sys.modules and "tomllib._parser" in sys.modules
config.release(config.STARTUP_MODULES, keep=before)
assert "agent.pseudonym" in sys.modules and hasattr(agent, "pseudonym")
assert not [m for m in sys.modules if m.startswith(("agent.config_load", "tomllib"))]
assert not hasattr(agent, "config_load")
assert config.load is not load and config.load.__module__ == "agent.config_load"  # imported again
"""
    subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                   check=True, timeout=30)
