"""Regenerate the golden wire vectors: `python tests/golden/make_vectors.py` (only when the format changes on
purpose — bump wire.VERSION then). Tests check that encoding the same records gives the same bytes.

`tests/golden/` holds the current version's vectors; `tests/golden/v1/` the frozen version-1 vectors, which
the encoder still reproduces with version=1 and every decoder must keep decoding (spools written by older
agents resend them byte-identical). This script never rewrites v1/."""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from agent import wire  # noqa: E402
from agent.records import Kind, Record  # noqa: E402

BOOT = "6f1c2a3b4c5d4e6f8a9b0c1d2e3f4a5b"
BID = wire.BatchId("VIN0001", "hu", 42, BOOT, 7)


def vectors(version: int = wire.VERSION) -> dict[str, bytes]:
    t, m = 1_767_225_600_000, 3_600_000
    recs = [
        Record(Kind.METRIC, "system.cpu_pct", t, m, BOOT, True, 12.5),
        Record(Kind.METRIC, "system.procs", t + 1000, m + 1000, BOOT, True, 143),
        Record(Kind.BEGIN, "display.freeze", t + 1500, m + 1500, BOOT, True,
               {"evidence": ["heartbeat"], "since_s": 5.0}, 99),
        Record(Kind.END, "display.freeze", t + 9500, m + 9500, BOOT, True,
               {"duration_s": 8.0, "evidence": ["heartbeat", "framebuffer"]}, 99),
        Record(Kind.EVENT, "display.gpu_hang", t + 9600, m + 9600, BOOT, True,
               {"driver": "etnaviv", "line": "etnaviv-gpu 130000.gpu: recover hung GPU!"}),
        Record(Kind.HEALTH, "agent.drops", t + 9700, m + 9700, BOOT, True, {"spool_full.metric": 3}),
    ]
    unsynced = [Record(Kind.METRIC, "system.cpu_pct", 86_400_000, 20_000, BOOT, False, 3.25)]
    many = [Record(Kind.METRIC, "system.cpu_pct", t + i * 1000, m + i * 1000, BOOT, True, float(i % 7))
            for i in range(200)]
    out = {
        "batch_small": wire.encode_batch(BID, recs, compress="never", version=version),
        "batch_unsynced": wire.encode_batch(BID, unsynced, compress="never", version=version),
        "batch_zlib": wire.encode_batch(BID, many, compress="always", version=version),
        "status_birth": wire.encode_status("birth", "VIN0001", "hu", BOOT, t,
                                           {"agent": "0.1.0", "config": "abcd", "inventory": {"hmi": "3.2.1"}},
                                           version=version),
        "status_death": wire.encode_status("death", "VIN0001", "hu", BOOT, t, {"clean": False}, version=version),
    }
    if version >= 2:
        # What live traffic looks like at the default config: one event sealed on its own, and five minutes
        # of system metrics (the default metric linger), both with the preset dictionary.
        out["batch_event"] = wire.encode_batch(BID, recs[4:5], compress="auto")
        out["batch_live"] = wire.encode_batch(BID, live_metrics(t, m), compress="auto")
    return out


def live_metrics(t: int, m: int) -> list[Record]:
    """30 ticks of the system probe's ten metrics, 10 s apart, with slowly moving values."""
    names = ["system.cpu_pct", "system.load1", "system.load5", "system.mem_used_pct", "system.mem_available_mib",
             "system.procs", "system.disk_used_pct", "system.disk_free_mib", "agent.cpu_pct", "agent.rss_mib"]
    out = []
    for k in range(30):
        for i, name in enumerate(names):
            v: float = 140 + k % 3 if name == "system.procs" else round(10 + i * 7.31 + (k * 37 % 11) / 4, 2)
            out.append(Record(Kind.METRIC, name, t + k * 10_000 + i, m + k * 10_000 + i, BOOT, True, v))
    return out


def main() -> None:
    for name, payload in vectors().items():
        (HERE / f"{name}.msgpack").write_bytes(payload)
        (HERE / f"{name}.json").write_text(json.dumps(wire.to_json(wire.decode(payload)), indent=2) + "\n")
        print(f"{name}: {len(payload)} bytes")


if __name__ == "__main__":
    main()
