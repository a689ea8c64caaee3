"""The `spool` line of `icvq status`: while the disk is full or read-only the records wait in memory, and the
line says so instead of "empty" (it read "0 records, 0 batches, 0 B of 64.0 MiB; empty" beside a verdict of
"3171 records held in memory")."""

from __future__ import annotations

import pytest

from agent.fieldcli.status import _spool


def _t(x: float | None) -> str:
    return str(x)


@pytest.mark.parametrize("sp, want", [
    ({"records": 0, "batches": 0, "bytes": 0, "max_bytes": 2**26}, "0 records, 0 batches, 0 B of 64.0 MiB; empty"),
    ({"records": 0, "batches": 0, "bytes": 0, "max_bytes": 2**26, "memory_records": 3171, "memory_batches": 0},
     "0 records, 0 batches, 0 B of 64.0 MiB; 3171 records held in memory"),
    ({"records": 5, "batches": 0, "bytes": 500, "max_bytes": 2**26, "oldest_wall_ms": 990_000,
      "memory_records": 40, "memory_batches": 2},
     "5 records, 0 batches, 500 B of 64.0 MiB; oldest 10s; 40 records held in memory (2 batches sealed there)"),
])
def test_spool_line(sp: dict[str, object], want: str) -> None:
    assert _spool(sp, 1000.0, 0, _t) == want
