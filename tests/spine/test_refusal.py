"""A broker that refuses our batches for a while (PUBACK 0x87: its ACL, e.g. reloaded half written) and then
accepts them again: the agent holds and retries, and nothing is dropped. Real mosquitto, its ACL file
rewritten and reloaded with SIGHUP, as an operator would."""

from __future__ import annotations

import itertools
import signal
import time
from pathlib import Path

from agentproc import AgentProc, base_config, write_config
from broker import Mosquitto, free_port
from recorder import Recorder


def test_refusals_for_a_while_lose_nothing(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text("topic read #\n")  # anonymous clients may read, not write: every batch is refused
    port = free_port()
    broker = Mosquitto(tmp_path / "b", port=port, persistent=False,
                       extra_conf=f"listener {port} 127.0.0.1\nallow_anonymous true\nacl_file {acl}\n").start()
    rec = Recorder(broker.port).start()
    agent = AgentProc(write_config(tmp_path, base_config(tmp_path, broker.port)), tmp_path / "agent.log").start()
    try:
        agent.wait_log("broker refuses our batches (reason 0x87)", 20)
        time.sleep(3)                          # several refusals of the same batches
        acl.write_text("topic readwrite #\n")
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGHUP)  # mosquitto re-reads its ACL file
        rec.wait(lambda r: len(r.batches()) >= 3, 60)
        time.sleep(2)
    finally:
        assert agent.stop() == 0
        time.sleep(1)
        rec.stop()
        broker.stop()
    batches = sorted(rec.unique().values(), key=lambda b: b.id.seq)
    seqs = [b.id.seq for b in batches]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"a batch is missing: {seqs}"
    records = [r for b in batches for r in b.records]
    cpu = sorted(r.wall_ms for r in records if r.name == "system.cpu_pct")
    assert max(b - a for a, b in itertools.pairwise(cpu)) < 2000, "samples from the refusal window arrive too"
    drops = [r.data for r in records if r.name == "agent.drops"]
    assert all(isinstance(d, dict) for d in drops)
    assert not [k for d in drops for k in d if str(k).startswith("rejected")], drops
    log = (tmp_path / "agent.log").read_text()
    assert "dropping it" not in log
