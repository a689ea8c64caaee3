"""SWIN (GB 44496 software identification number) from the car to the version-regression test: the real agent
reads it from a file/command and sends it in the birth message, the ingest stores it, and the regression test
can group by it — telling apart two builds that carry the same version string."""

from __future__ import annotations

from pathlib import Path

from agentproc import AgentProc, base_config, write_config
from ingest_helper import Ingest

from agent.fieldcli.client import Client
from tools.ingest.predict_data import Boot, Occurrence, software_view
from tools.ingest.predict_params import Params
from tools.ingest.predict_versions import version_rows


def test_birth_carries_swin_and_the_ingest_stores_it(tmp_path: Path, broker) -> None:
    (tmp_path / "hmi.version").write_text("3.2.1\n")
    cfg = base_config(tmp_path, broker.port, agent={"components": {"modem": "1.0"}, "software": {
        "hmi": {"version_file": str(tmp_path / "hmi.version"), "swin_command": ["/bin/echo", "HMI-0302-B"]}}})
    ing = Ingest(tmp_path / "ingest.db", broker.port).start()
    agent = AgentProc(write_config(tmp_path, cfg), tmp_path / "agent.log").start()
    try:
        rows = ing.wait_for("SELECT component, version FROM software ORDER BY component", lambda r: len(r) >= 4)
        with Client(cfg["control"]["socket"]) as c:
            status = c.request({"cmd": "status"})["status"]
        assert status["software"] == {"versions": {"hmi": "3.2.1", "modem": "1.0"}, "swin": {"hmi": "HMI-0302-B"}}
    finally:
        assert agent.stop() == 0
        ing.stop()
    assert {"hmi": "3.2.1", "modem": "1.0", "swin:hmi": "HMI-0302-B"}.items() <= dict(rows).items()


def _fleet(n: int = 40) -> tuple[list[Boot], list[Occurrence]]:
    """Half the fleet runs build A, half build B, both reporting hmi version 3.2.1; build A freezes 4x as often."""
    boots, occs = [], []
    for i in range(n):
        build = "A" if i % 2 else "B"
        sw = {"hmi": "3.2.1", "swin:hmi": f"HMI-0302-{build}"}
        for d in range(10):
            b = Boot(f"V{i}", "hu", f"b{i}-{d}", d * 86400.0, d * 86400.0 + 36000, 10.0, sw)
            boots.append(b)
            for k in range(8 if build == "A" else 2):
                occs.append(Occurrence(b.vehicle, "hu", b.boot, "freeze", "display", b.t0 + k * 60, 5.0,
                                       "display.freeze"))
    return boots, occs


def test_version_test_can_group_by_swin() -> None:
    boots, occs = _fleet()
    p = Params()
    by_version = version_rows([_as(b, "version") for b in boots], occs, p, set())
    assert by_version == []  # one version string: nothing to compare
    by_swin = version_rows([_as(b, "swin") for b in boots], occs, p, set())
    flagged = {(r.component, r.version) for r in by_swin if r.flagged}
    assert flagged == {("hmi", "SWIN HMI-0302-A")}


def _as(b: Boot, by: str) -> Boot:
    return Boot(b.vehicle, b.device, b.boot, b.t0, b.t1, b.hours, software_view(b.sw, by))
