"""A durable outbox on local disk for long InfluxDB outages (SQLite in WAL mode).

When InfluxDB has been unreachable for longer than the broker and memory should hold, ingest
appends each batch's line protocol here, and only once the append is committed to disk does it
acknowledge the batch to the broker. A drainer writes the batches back to InfluxDB oldest first
when it returns; while anything is waiting here, new batches queue behind it, so InfluxDB sees
readings in the order they arrived. Memory stays bounded: batches live on disk, not in lists.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from floodwatch.errors import FloodwatchError


class OutboxError(FloodwatchError):
    """The outbox file cannot be opened or written; the message names the file."""


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    batches: int
    lines: int
    bytes: int
    oldest_age_s: float  # 0 when empty


class Outbox:
    """Batches of line protocol, appended durably and removed once InfluxDB stored them."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            # WAL with a full sync on every commit: an acknowledged batch survives a power cut.
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS batches (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "created_ns INTEGER NOT NULL, lines INTEGER NOT NULL, body BLOB NOT NULL)"
            )
            row = self._db.execute(
                "SELECT count(*), coalesce(sum(lines), 0), coalesce(sum(length(body)), 0), "
                "min(created_ns) FROM batches"
            ).fetchone()
        except sqlite3.Error as exc:
            raise OutboxError(
                f"cannot open the outbox {path}: {exc}; point --outbox at a writable file"
            ) from exc
        self._lock = threading.Lock()
        self._batches, self._lines, self._bytes = int(row[0]), int(row[1]), int(row[2])
        self._oldest_ns: int | None = row[3]

    def append(self, lines: list[str], now_ns: int | None = None) -> bool:
        """Store a batch durably; False when the outbox is full (the caller must not ack)."""
        body = "\n".join(lines).encode("utf-8")
        created = time.time_ns() if now_ns is None else now_ns
        with self._lock:
            if self._bytes + len(body) > self.max_bytes:
                return False
            try:
                self._db.execute(
                    "INSERT INTO batches (created_ns, lines, body) VALUES (?, ?, ?)",
                    (created, len(lines), body),
                )
            except sqlite3.Error as exc:
                raise OutboxError(f"cannot write the outbox {self.path}: {exc}") from exc
            self._batches += 1
            self._lines += len(lines)
            self._bytes += len(body)
            if self._oldest_ns is None:
                self._oldest_ns = created
        return True

    def oldest(self) -> tuple[int, list[str]] | None:
        """The oldest batch (id, lines), or None when empty."""
        with self._lock:
            row = self._db.execute("SELECT id, body FROM batches ORDER BY id LIMIT 1").fetchone()
        if row is None:
            return None
        return int(row[0]), bytes(row[1]).decode("utf-8").split("\n")

    def remove(self, batch_id: int) -> None:
        """Forget a batch InfluxDB has stored."""
        with self._lock:
            row = self._db.execute(
                "SELECT lines, length(body) FROM batches WHERE id = ?", (batch_id,)
            ).fetchone()
            if row is None:
                return
            self._db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
            self._batches -= 1
            self._lines -= int(row[0])
            self._bytes -= int(row[1])
            nxt = self._db.execute("SELECT min(created_ns) FROM batches").fetchone()
            self._oldest_ns = nxt[0]

    @property
    def empty(self) -> bool:
        return self._batches == 0

    def status(self, now_ns: int | None = None) -> OutboxStatus:
        now = time.time_ns() if now_ns is None else now_ns
        age = 0.0 if self._oldest_ns is None else max(0.0, (now - self._oldest_ns) / 1e9)
        return OutboxStatus(self._batches, self._lines, self._bytes, age)

    def close(self) -> None:
        with self._lock:
            self._db.close()
