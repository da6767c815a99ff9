"""The notifier's durable state on local disk (SQLite in WAL mode, like ingest's outbox): the
delivery queue, the dead letters, the escalation tracks and the history of who was told.

A notification is queued, with the tracks it changed, in one committed transaction before the
alert event that caused it is acknowledged to the broker: a crash loses nothing, and at worst
sends something twice (with the same notification id, so receivers can deduplicate).

Per destination (a channel and an address) and per alert, notifications go out in the order
they were queued: `due` hands out only the oldest undelivered one of each alert.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from floodwatch.errors import FloodwatchError
from notify.escalation import Track

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
# Not sent: the sensor was under maintenance (kept for the history, never delivered).
SUPPRESSED = "suppressed"


class StoreError(FloodwatchError):
    """The notifier's state file cannot be opened or written; the message names the file."""


@dataclass(frozen=True, slots=True)
class NewDelivery:
    notification_id: str  # deterministic: the same event gives the same id
    dest: str  # "{channel}|{address}"
    channel: str
    recipient: str
    alert_id: str
    message: str
    tier: int
    payload: bytes  # the rendered notification (JSON)
    not_before_ns: int  # quiet hours hold non-urgent notifications until then
    suppressed: str = ""  # why it goes to nobody (maintenance): recorded, never sent


@dataclass(frozen=True, slots=True)
class Settled:
    """A notification another notifier settled, as its retained record says (a standby's
    copy, notify/lease.py): delivered, dead or suppressed."""

    status: str
    error: str
    delivered_ns: int | None
    attempts: int


@dataclass(frozen=True, slots=True)
class Delivery:
    id: int
    notification_id: str
    dest: str
    channel: str
    recipient: str
    alert_id: str
    message: str
    tier: int
    payload: bytes
    created_ns: int
    next_ns: int
    attempts: int
    status: str
    last_error: str
    delivered_ns: int | None

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "notification_id": self.notification_id,
            "channel": self.channel,
            "recipient": self.recipient,
            "alert_id": self.alert_id,
            "message": self.message,
            "tier": self.tier,
            "status": self.status,
            "attempts": self.attempts,
            "created_ns": self.created_ns,
            "next_ns": self.next_ns,
            "delivered_ns": self.delivered_ns,
            "error": self.last_error,
        }


_COLUMNS = (
    "id, notification_id, dest, channel, recipient, alert_id, message, tier, payload, "
    "created_ns, next_ns, attempts, status, last_error, delivered_ns"
)


def _row(row: Sequence[object]) -> Delivery:
    return Delivery(
        int(row[0]),  # type: ignore[call-overload]
        str(row[1]),
        str(row[2]),
        str(row[3]),
        str(row[4]),
        str(row[5]),
        str(row[6]),
        int(row[7]),  # type: ignore[call-overload]
        bytes(row[8]),  # type: ignore[call-overload]
        int(row[9]),  # type: ignore[call-overload]
        int(row[10]),  # type: ignore[call-overload]
        int(row[11]),  # type: ignore[call-overload]
        str(row[12]),
        str(row[13] or ""),
        None if row[14] is None else int(row[14]),  # type: ignore[call-overload]
    )


class Store:
    """One SQLite file, one connection shared by the notifier's threads under a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            # A queued notification survives a power cut once its event is acknowledged.
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(
                """
                CREATE TABLE IF NOT EXISTS deliveries (
                    id INTEGER PRIMARY KEY AUTOINCREMENT,
                    notification_id TEXT NOT NULL UNIQUE,
                    dest TEXT NOT NULL, channel TEXT NOT NULL, recipient TEXT NOT NULL,
                    alert_id TEXT NOT NULL, message TEXT NOT NULL, tier INTEGER NOT NULL,
                    payload BLOB NOT NULL, created_ns INTEGER NOT NULL, next_ns INTEGER NOT NULL,
                    attempts INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL,
                    last_error TEXT, delivered_ns INTEGER);
                CREATE INDEX IF NOT EXISTS deliveries_due
                    ON deliveries (dest, status, alert_id, id);
                CREATE INDEX IF NOT EXISTS deliveries_alert ON deliveries (alert_id, id);
                CREATE INDEX IF NOT EXISTS deliveries_status ON deliveries (status, dest, channel);
                CREATE TABLE IF NOT EXISTS tracks (alert_id TEXT PRIMARY KEY, doc BLOB NOT NULL);
                """
            )
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot open the notifier's state {path}: {exc}; point --state at a writable file"
            ) from exc
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, statements: Iterable[tuple[str, Sequence[object]]]) -> None:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for sql, params in statements:
                    self._db.execute(sql, params)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StoreError(f"cannot write the notifier's state {self.path}: {exc}") from exc

    # -- the router's side ----------------------------------------------------------------------

    def commit(
        self,
        tracks: dict[str, Track],
        forget: Sequence[str],
        deliveries: Sequence[NewDelivery],
        now_ns: int,
    ) -> None:
        """Queue notifications and save the tracks they came from, in one transaction.

        A notification id already queued is ignored (a redelivered event)."""
        statements: list[tuple[str, Sequence[object]]] = [
            (
                "INSERT OR REPLACE INTO tracks (alert_id, doc) VALUES (?, ?)",
                (alert_id, orjson.dumps(track.to_dict())),
            )
            for alert_id, track in tracks.items()
        ]
        statements += [("DELETE FROM tracks WHERE alert_id = ?", (a,)) for a in forget]
        statements += [
            (
                "INSERT OR IGNORE INTO deliveries (notification_id, dest, channel, recipient, "
                "alert_id, message, tier, payload, created_ns, next_ns, status, last_error) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    d.notification_id,
                    d.dest,
                    d.channel,
                    d.recipient,
                    d.alert_id,
                    d.message,
                    d.tier,
                    d.payload,
                    now_ns,
                    max(now_ns, d.not_before_ns),
                    SUPPRESSED if d.suppressed else PENDING,
                    d.suppressed,
                ),
            )
            for d in deliveries
        ]
        if statements:
            self._write(statements)

    def load_tracks(self) -> dict[str, Track]:
        with self._lock:
            rows = self._db.execute("SELECT alert_id, doc FROM tracks").fetchall()
        return {str(a): Track.from_dict(orjson.loads(doc)) for a, doc in rows}

    # -- the senders' side ----------------------------------------------------------------------

    def destinations(self) -> list[tuple[str, str]]:
        """(dest, channel) of everything not yet delivered."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT dest, channel FROM deliveries WHERE status = ?", (PENDING,)
            ).fetchall()
        return [(str(d), str(c)) for d, c in rows]

    def due(self, dest: str, now_ns: int, limit: int) -> tuple[list[Delivery], int | None]:
        """Up to `limit` notifications for `dest` that may go now, at most one per alert (the
        oldest undelivered), oldest first; and when the next held one is due (or None)."""
        with self._lock:
            # The heads' ids and times first; the payloads only of those that go now.
            heads = self._db.execute(
                "SELECT id, next_ns FROM deliveries WHERE id IN ("
                "SELECT min(id) FROM deliveries WHERE dest = ? AND status = ? GROUP BY alert_id"
                ") ORDER BY id",
                (dest, PENDING),
            ).fetchall()
            ready_ids = [int(i) for i, next_ns in heads if next_ns <= now_ns][:limit]
            rows = (
                self._db.execute(
                    f"SELECT {_COLUMNS} FROM deliveries WHERE id IN "
                    f"({','.join('?' * len(ready_ids))}) ORDER BY id",
                    ready_ids,
                ).fetchall()
                if ready_ids
                else []
            )
        waiting = [int(next_ns) for _, next_ns in heads if next_ns > now_ns]
        ready = [_row(r) for r in rows]
        later = min(waiting) if waiting else None
        return ready, later

    def delivered(self, ids: Sequence[int], now_ns: int) -> None:
        self._write(
            (
                "UPDATE deliveries SET status = ?, delivered_ns = ?, attempts = attempts + 1 "
                "WHERE id = ?",
                (DELIVERED, now_ns, i),
            )
            for i in ids
        )

    def failed(
        self, failures: Sequence[tuple[int, str]], dead: bool, retry_at_ns: int | None = None
    ) -> None:
        """Count a failed attempt; `dead` moves them to the dead letters; `retry_at_ns` holds
        them (and their alerts' later notifications) until then."""
        self._write(
            (
                "UPDATE deliveries SET attempts = attempts + 1, last_error = ?, status = ?, "
                "next_ns = max(next_ns, ?) WHERE id = ?",
                (error[:500], DEAD if dead else PENDING, retry_at_ns or 0, i),
            )
            for i, error in failures
        )

    def settle(self, outcomes: dict[str, Settled]) -> None:
        """A standby's copy of what the active notifier settled (notification id -> outcome):
        only notifications still pending here change, so it never undoes anything."""
        self._write(
            (
                "UPDATE deliveries SET status = ?, last_error = ?, delivered_ns = ?, attempts = ? "
                "WHERE notification_id = ? AND status = ?",
                (o.status, o.error[:500], o.delivered_ns, o.attempts, nid, PENDING),
            )
            for nid, o in sorted(outcomes.items())
        )

    def suppress(self, ids: Sequence[int], reason: str) -> None:
        """Queued notifications that must now go to nobody (their sensor went under
        maintenance while they waited): kept for the history, never sent."""
        self._write(
            (
                "UPDATE deliveries SET status = ?, last_error = ? WHERE id = ? AND status = ?",
                (SUPPRESSED, reason, i, PENDING),
            )
            for i in ids
        )

    def abandon(self, dest: str, reason: str) -> int:
        """Every undelivered notification of a destination becomes a dead letter."""
        with self._lock:
            cur = self._db.execute(
                "UPDATE deliveries SET status = ?, last_error = ? WHERE dest = ? AND status = ?",
                (DEAD, reason, dest, PENDING),
            )
            return int(cur.rowcount)

    # -- operators ------------------------------------------------------------------------------

    def dead_letters(self) -> list[Delivery]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM deliveries WHERE status = ? ORDER BY id", (DEAD,)
            ).fetchall()
        return [_row(r) for r in rows]

    def replay(self, ids: Sequence[int] | None, now_ns: int) -> int:
        """Put dead letters (all, or these ids) back in the queue; return how many."""
        with self._lock:
            if ids is None:
                cur = self._db.execute(
                    "UPDATE deliveries SET status = ?, next_ns = ?, last_error = '' "
                    "WHERE status = ?",
                    (PENDING, now_ns, DEAD),
                )
            else:
                cur = self._db.executemany(
                    "UPDATE deliveries SET status = ?, next_ns = ?, last_error = '' "
                    "WHERE status = ? AND id = ?",
                    [(PENDING, now_ns, DEAD, i) for i in ids],
                )
            return int(cur.rowcount)

    def history(self, alert_id: str) -> list[Delivery]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM deliveries WHERE alert_id = ? ORDER BY id", (alert_id,)
            ).fetchall()
        return [_row(r) for r in rows]

    def oldest_pending_ns(self) -> int | None:
        """When the oldest undelivered notification was queued (None when none is)."""
        with self._lock:
            row = self._db.execute(
                "SELECT min(created_ns) FROM deliveries WHERE status = ?", (PENDING,)
            ).fetchone()
        return None if row[0] is None else int(row[0])

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute(
                "SELECT status, count(*) FROM deliveries GROUP BY status"
            ).fetchall()
        return {str(s): int(n) for s, n in rows}

    def prune(self, before_ns: int) -> int:
        """Forget delivered (and suppressed) notifications older than `before_ns`."""
        with self._lock:
            cur = self._db.execute(
                "DELETE FROM deliveries WHERE (status = ? AND delivered_ns < ?) "
                "OR (status = ? AND created_ns < ?)",
                (DELIVERED, before_ns, SUPPRESSED, before_ns),
            )
            return int(cur.rowcount)
