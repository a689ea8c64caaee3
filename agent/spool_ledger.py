"""The drop ledger: counts the spool could not persist at a stop, kept in a small file until reported.

Owns one JSON file (`spool.ledger_path`; by default next to the control socket, /run/icvq under the unit,
which keeps it across restarts with RuntimeDirectoryPreserve=restart). When an agent stops with records in
memory that neither the broker nor the spool can take (read-only or unopenable spool, broker down), the
spool's own tally cannot reach the disk either; the ledger is the last place the count goes. It holds the
*unpersisted* part of the drop counters (what the spool's `meta.drops` lacks), with the stop's loss under
`stop_unpersisted.*`, the run's identity and the time. One entry at most: a later stop replaces it with a
superset (its counters include what the previous ledger reported), so nothing is counted twice.

The next start merges it into the spool's counters (so it rides in the normal `agent.drops` record) and
deletes it only once that is durable: committed to the spool's meta together with the ledger's id (a crash
between commit and unlink is then recognised), or, in memory mode, once a batch carrying an `agent.drops`
record with `stop_unpersisted` is acknowledged by the broker.

Written atomically (temp file 0600, fsync, rename, fsync of the directory): ~300 bytes, once per stop. No
threads; called by the spool on the pipeline thread (open, ack, close). Imported only when a ledger exists at
start or one must be written (issue 13: the 20 KiB of this module are not held by an idle, healthy daemon).
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import field
from pathlib import Path

from .dataclass_shared import dataclass
from .private import fsync_dir, private_dir, replace_private

log = logging.getLogger("icvq.spool")

MAX_BYTES = 64 * 1024   # a ledger bigger than this is not ours


@dataclass(frozen=True)
class Ledger:
    id: str
    drops: dict[str, int]
    run: dict[str, object] = field(default_factory=dict)
    written_ms: int = 0


def read(path: Path) -> Ledger | None:
    """The ledger at `path`, or None (none, or unreadable: logged, left in place for a look)."""
    try:
        raw = path.read_bytes()[:MAX_BYTES]
    except FileNotFoundError:
        return None
    except OSError as e:
        log.error("cannot read the drop ledger %s: %s", path, e)
        return None
    try:
        doc = json.loads(raw)
        drops = {str(k): int(v) for k, v in doc["drops"].items() if int(v) > 0}
        return Ledger(str(doc["id"]), drops, dict(doc.get("run", {})), int(doc.get("written_ms", 0)))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        log.error("drop ledger %s is not readable (%s); left in place", path, e)
        return None


def write(path: Path, drops: dict[str, int], run: dict[str, object], written_ms: int) -> Ledger:
    """Replace the ledger atomically and durably. Raises OSError when that is impossible."""
    led = Ledger(secrets.token_hex(8), dict(drops), dict(run), written_ms)
    private_dir(path.parent)
    body = json.dumps({"id": led.id, "drops": led.drops, "run": led.run, "written_ms": written_ms},
                      sort_keys=True).encode()
    replace_private(path, body, 0o600)
    return led


def remove(path: Path, led: Ledger) -> None:
    """Delete the ledger once its counts are durable elsewhere — only if it is still the one we read."""
    current = read(path)
    if current is None or current.id != led.id:
        return
    try:
        path.unlink()
        fsync_dir(path.parent)
        log.warning("drop ledger %s reported (%s) and removed", path, json.dumps(led.drops, sort_keys=True))
    except OSError as e:
        log.error("cannot remove the drop ledger %s: %s", path, e)
