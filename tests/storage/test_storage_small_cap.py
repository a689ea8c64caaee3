"""The smallest caps (`spool.max_mib` 0.25 and 0.5) with the default 96 KiB batches: the spool's files stay
under the cap while the broker is away (every put evicts) and while the backlog drains when it is back (every
seal deletes rows), and every record is delivered or counted. At these caps one transaction's WAL is a large
share of the whole: an evicting put rewrites ~20 pages, a seal of a 96 KiB batch rewrites every page its rows
sat on, and both used to push the files past the cap (1.08x and 1.27x at 0.25)."""

from __future__ import annotations

import time

import pytest
from broker import Mosquitto
from recorder import Recorder
from storage_util import Mount
from test_storage_pipeline import Rig, drain_and_balance


@pytest.mark.parametrize("max_mib", [0.25, 0.5])
def test_a_small_cap_holds_while_filling_and_while_draining(mount: Mount, broker: Mosquitto,
                                                           max_mib: float) -> None:
    fs = mount("4m")
    broker.kill()
    rig = Rig(fs, broker.port, max_mib, max_batch_kib=96)
    rec: Recorder | None = None
    try:
        cap = int(max_mib * 2**20)
        worst = 0
        for _ in range(int(400 * max_mib) + 50):
            rig.pump(40)
            worst = max(worst, rig.spool.disk_bytes())
        assert worst <= cap, f"filling: the spool's files reached {worst} bytes, cap {cap}"
        assert rig.spool.drops.get("spool_full.metric", 0) > 0
        rec = Recorder(broker.start().port).start()
        rig.pipeline.request_flush()
        deadline = time.monotonic() + 60
        worst = 0
        while rig.waiting() and time.monotonic() < deadline:
            rig.pipeline.step()
            worst = max(worst, rig.spool.disk_bytes())
            time.sleep(0.01)
        assert not rig.waiting(), rig.spool.stats()
        assert worst <= cap, f"draining: the spool's files reached {worst} bytes, cap {cap}"
        drain_and_balance(rig, rec)
    finally:
        if rec is not None:
            rec.stop()
        rig.close()


def test_a_cap_larger_than_its_partition_without_headroom_still_drains(mount: Mount, broker: Mosquitto) -> None:
    """max_mib 64 on a 1 MiB partition with min_free_mib = 0: the spool filled the disk itself, all of it in
    the WAL (never checkpointed: its share of a 64 MiB cap is 4 MiB), so no write could go through — not
    even the checkpoint that needs room in the database file — and the records on disk never left, though
    the broker was back. The cap follows the file system's free space with no headroom too."""
    fs = mount("1m")
    broker.kill()
    rig = Rig(fs, broker.port, 64.0, max_batch_kib=96)
    rec: Recorder | None = None
    try:
        for _ in range(150):
            rig.pump(40)
        assert rig.spool.n_records > 0
        rec = Recorder(broker.start().port).start()
        deadline = time.monotonic() + 60
        while rig.spool.n_records and time.monotonic() < deadline:
            rig.pump(1)        # records keep coming, as on a car
            time.sleep(0.02)
        assert not rig.spool.n_records, f"records stuck on disk: {rig.spool.stats()}"
        drain_and_balance(rig, rec)
    finally:
        if rec is not None:
            rec.stop()
        rig.close()
