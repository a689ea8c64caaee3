"""The `spool` line of `icvq status`: while the disk is full or read-only the records wait in memory, and the
line says so instead of "empty" (it read "0 records, 0 batches, 0 B of 64.0 MiB; empty" beside a verdict of
"3171 records held in memory")."""

from __future__ import annotations

import pytest

from agent.fieldcli.status import _spool
from agent.spool_disk import Budget


def _t(x: float | None) -> str:
    return str(x)


@pytest.mark.parametrize("sp, want", [
    ({"records": 0, "batches": 0, "bytes": 0, "max_bytes": 2**26}, "0 records, 0 batches, 0 B of 64.0 MiB; empty"),
    ({"records": 0, "batches": 0, "bytes": 0, "max_bytes": 2**26, "memory_records": 3171, "memory_batches": 0},
     "0 records, 0 batches, 0 B of 64.0 MiB; 3171 records held in memory"),
    ({"records": 5, "batches": 0, "bytes": 500, "max_bytes": 2**26, "oldest_wall_ms": 990_000,
      "memory_records": 40, "memory_batches": 2},
     "5 records, 0 batches, 500 B of 64.0 MiB; oldest 10s; 40 records held in memory (2 batches sealed there)"),
    # The running agent's cap: what the database may hold, as the verdict's "N % full" counts it.
    ({"records": 1, "batches": 0, "bytes": 100, "max_bytes": 2**26, "cap_bytes": Budget.for_cap(2**26).db_cap,
      "oldest_wall_ms": 999_000},
     "1 records, 0 batches, 100 B of 56.7 MiB; oldest 1s"),
    # Cut by the file system's free space (max_mib 64 on a 1 MiB partition): it read "610 KiB of 64.0 MiB" beside
    # "spool 95 % full".
    ({"records": 3000, "batches": 0, "bytes": 624_640, "max_bytes": 2**26, "cap_bytes": 660_000,
      "oldest_wall_ms": 990_000},
     "3000 records, 0 batches, 610.0 KiB of 644.5 KiB (max_mib 64.0 MiB, cut to what the file system has free); "
     "oldest 10s"),
])
def test_spool_line(sp: dict[str, object], want: str) -> None:
    assert _spool(sp, 1000.0, 0, _t) == want
