"""The whole loop with real parts: agent subprocess → mosquitto → ingest → SQLite."""

from __future__ import annotations

from pathlib import Path

from agentproc import AgentProc, base_config, write_config
from ingest_helper import Ingest


def test_system_metrics_arrive_and_decode(tmp_path: Path, broker) -> None:
    ing = Ingest(tmp_path / "ingest.db", broker.port).start()
    agent = AgentProc(write_config(tmp_path, base_config(tmp_path, broker.port)), tmp_path / "agent.log").start()
    try:
        rows = ing.wait_for("SELECT name, value FROM records WHERE name = 'system.cpu_pct'", lambda r: len(r) >= 3)
        assert all(0 <= v <= 100 * 64 for _, v in rows)
        births = ing.wait_for("SELECT kind FROM status WHERE kind = 'birth'", lambda r: len(r) >= 1)
        assert births
    finally:
        assert agent.stop() == 0
        ing.stop()
    seqs = [s for (s,) in ing.query("SELECT seq FROM batches ORDER BY seq")]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert ing.query("SELECT kind FROM status ORDER BY received DESC LIMIT 1") == [("death",)]
