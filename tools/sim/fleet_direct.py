"""The direct path: a simulated fleet's payloads go from the agent's encoder straight into an ingest store.

Same bytes as over MQTT (agent.wire.encode_batch / encode_status), decoded by the same strict decoder and
written by the same store code; only the broker is skipped. Used to make weeks of fleet history in seconds
for the prediction evaluation, the report and its test.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Iterator

from agent import wire
from tools.ingest import rows
from tools.ingest.store import Store

from .fleet_model import Car, birth_fields


def payloads(car: Car, topic_prefix: str = "icvq/v1", batch_records: int = 400) -> Iterator[tuple[str, bytes]]:
    """(topic, payload) for every drive of a car: birth, batches, death — as the agent would publish them."""
    base = f"{topic_prefix}/{car.fleet}/{car.vehicle}/{car.device}"
    sid = random.Random(car.idx * 7 + 1).getrandbits(63)
    seq = 1
    for d in car.drives():
        yield f"{base}/status", wire.encode_status("birth", d.vehicle, d.device, d.boot, int(d.t_start * 1000),
                                                   birth_fields(d))
        for i in range(0, len(d.records), batch_records):
            chunk = d.records[i:i + batch_records]
            bid = wire.BatchId(d.vehicle, d.device, sid, d.boot, seq)
            seq += 1
            yield f"{base}/batch", wire.encode_batch(bid, chunk)
        yield f"{base}/status", wire.encode_status("death", d.vehicle, d.device, d.boot,
                                                   int((d.t_start + d.duration_s) * 1000), {"clean": True})


def load(store: Store, cars: Iterable[Car], *, group: int = 500) -> dict[str, float]:
    """Write the fleet's whole history into `store`; returns counts."""
    pending: list[rows.Message] = []
    n_msgs = n_batches = 0
    started = time.monotonic()
    for car in cars:
        for topic, payload in payloads(car):
            pending.append(rows.decode(topic, payload, time.time()))
            n_msgs += 1
            n_batches += topic.endswith("/batch")
            if len(pending) >= group:
                store.write(pending)
                pending = []
    if pending:
        store.write(pending)
    return {"messages": n_msgs, "batches": n_batches, "seconds": round(time.monotonic() - started, 1)}
