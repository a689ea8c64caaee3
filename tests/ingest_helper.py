"""An in-process ingest consumer for end-to-end tests (the real tools.ingest code on a thread)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from tools.ingest.consumer import Consumer
from tools.ingest.store import SqliteStore


class Ingest:
    def __init__(self, db: Path, port: int) -> None:
        self.store = SqliteStore(db)
        self.consumer = Consumer(self.store, "127.0.0.1", port)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        # The broker may be killed under us: reconnecting is the consumer's job in production; here the
        # test restarts the consumer's loop until told to stop.
        while not self.consumer.stop_ev.is_set():
            try:
                self.consumer.run()
            except OSError:
                time.sleep(0.2)

    def start(self) -> Ingest:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.consumer.stop_ev.set()
        self.thread.join(10)

    def query(self, sql: str, *args: object) -> list[tuple]:
        with self.consumer.q.mutex:
            pass
        import sqlite3

        db = sqlite3.connect(self.store.db.execute("PRAGMA database_list").fetchone()[2])
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def wait_for(self, sql: str, predicate, timeout_s: float = 20.0, *args: object) -> list[tuple]:
        deadline = time.monotonic() + timeout_s
        rows: list[tuple] = []
        while time.monotonic() < deadline:
            rows = self.query(sql, *args)
            if predicate(rows):
                return rows
            time.sleep(0.2)
        raise TimeoutError(f"{sql}: last rows {rows[:5]}")
