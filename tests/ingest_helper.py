"""An in-process ingest consumer for end-to-end tests (the real tools.ingest code on a thread)."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tools.ingest.consumer import Consumer
from tools.ingest.store import SqliteStore


class Ingest:
    def __init__(self, db: Path, port: int, **consumer_options: Any) -> None:
        self.db_path = Path(db)
        self.store = SqliteStore(db)
        self.consumer = Consumer(self.store, "127.0.0.1", port, **consumer_options)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        # The consumer reconnects by itself when the broker goes away; run() returns only when stopped.
        self.consumer.run()

    def start(self) -> Ingest:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.consumer.stop_ev.set()
        self.thread.join(10)

    def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        # A connection of its own: the consumer's thread owns the store's.
        db = sqlite3.connect(self.db_path, timeout=10)
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def wait_for(self, sql: str, predicate: Callable[[list[tuple[Any, ...]]], bool], timeout_s: float = 20.0,
                 *args: object) -> list[tuple[Any, ...]]:
        deadline = time.monotonic() + timeout_s
        rows: list[tuple[Any, ...]] = []
        while time.monotonic() < deadline:
            rows = self.query(sql, *args)
            if predicate(rows):
                return rows
            time.sleep(0.2)
        raise TimeoutError(f"{sql}: last rows {rows[:5]}")
