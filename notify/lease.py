"""Active/standby for the clustered mode's notifiers: one lease in a JetStream key-value bucket
(R3), so exactly one notifier delivers at a time and a standby takes over when it dies.

The lease is the key `active_ROOT` of the bucket LEASE_BUCKET (one key per topic root), whose
value names the holder. The bucket's TTL removes
a value that nobody renewed for LEASE_TTL_S; a standby's `create` (refused while the key
exists) then succeeds. The holder renews with `update(..., last=revision)`: once another
notifier has taken the key, the old revision no longer matches and the update is refused, so a
deposed holder (paused, cut off) learns it lost. Until it learns, fencing is local: the lease
counts as held only until the renewal's start plus the TTL minus a margin, which ends before
the server can let anyone else take it (the server counts the TTL from when it stored the
value, later than the start), and senders check it before each send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

import nats
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BucketNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from floodwatch.cluster import REPLICAS, connect, retrying

log = logging.getLogger("notify.lease")

# One bucket with a fixed name, so that the `notify` user's permissions can name its subjects.
LEASE_BUCKET = "floodwatch_notify_lease"
# A dead holder's lease is gone within the TTL; a standby asks every TRY_EVERY_S, so it takes
# over within about LEASE_TTL_S + TRY_EVERY_S (the issue asks ~10 s).
LEASE_TTL_S = 6.0
RENEW_EVERY_S = 1.5
TRY_EVERY_S = 0.5
# The holder stops sending this long before the server could give the lease to another.
MARGIN_S = 1.5


def lease_key(root: str) -> str:
    """One lease per topic root (the tests give each test its own root)."""
    safe = "".join(ch if ch.isalnum() else "_" for ch in root)
    return f"active_{safe}"


@dataclass
class LeaseState:
    """What the holder knows of its lease; pure, times are monotonic seconds passed in."""

    revision: int | None = None
    held_until: float = 0.0

    def held(self, now: float) -> bool:
        return self.revision is not None and now < self.held_until

    def won(self, revision: int, asked_at: float, ttl_s: float, margin_s: float) -> None:
        """The server stored our value (created or renewed) after `asked_at`."""
        self.revision = revision
        self.held_until = asked_at + ttl_s - margin_s

    def lost(self) -> None:
        self.revision = None
        self.held_until = 0.0


class Lease:
    """Takes and renews the lease in a thread of its own (nats-py is asyncio)."""

    def __init__(
        self,
        servers: Sequence[str],
        root: str,
        holder: str,
        ttl_s: float = LEASE_TTL_S,
        renew_every_s: float = RENEW_EVERY_S,
        try_every_s: float = TRY_EVERY_S,
        margin_s: float = MARGIN_S,
    ) -> None:
        if not 0 < renew_every_s < ttl_s - margin_s:
            raise ValueError("the lease must be renewed well within its TTL minus the margin")
        self.servers = list(servers)
        self.bucket = LEASE_BUCKET
        self.key = lease_key(root)
        self.holder = holder
        self.ttl_s = ttl_s
        self.renew_every_s = renew_every_s
        self.try_every_s = try_every_s
        self.margin_s = margin_s
        self.state = LeaseState()
        self.stop = threading.Event()
        self.changed = threading.Event()  # set when the lease is taken or lost
        self.thread = threading.Thread(target=self._thread, name="notify-lease", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def held(self) -> bool:
        """Senders' threads: may this notifier deliver now (the fence, checked before each
        send)?"""
        return self.state.held(time.monotonic())

    async def _bucket(self, js: nats.js.JetStreamContext) -> KeyValue:
        try:
            return await js.key_value(self.bucket)
        except BucketNotFoundError:
            # Both notifiers may create it at once: the same configuration is accepted twice.
            return await js.create_key_value(
                KeyValueConfig(
                    bucket=self.bucket,
                    history=1,
                    ttl=self.ttl_s,
                    replicas=REPLICAS,
                    storage=StorageType.FILE,
                )
            )

    def release(self, timeout_s: float = 5.0) -> None:
        """A clean stop, once nothing is sent any more: give the lease up at once, so the
        standby takes over without waiting for the TTL."""
        self.stop.set()
        self.thread.join(timeout_s)

    def _thread(self) -> None:
        """Never gives up: a notifier whose lease thread died would stand by for ever."""
        while not self.stop.is_set():
            try:
                asyncio.run(self._run())
            except Exception as exc:  # the cluster unreachable, a bucket not made: try again
                self.state.lost()
                log.error("lease: %s; trying again in 1 s (this notifier sends nothing)", exc)
                self.stop.wait(1.0)

    async def _run(self) -> None:
        nc = await connect(self.servers)
        try:
            js = nc.jetstream(timeout=3)
            kv = await retrying(lambda: self._bucket(js), "the notifier lease bucket", 120.0)
            while not self.stop.is_set():
                await self._step(kv)
                pause = self.renew_every_s if self.held() else self.try_every_s
                await self._sleep(pause)
            revision = self.state.revision
            self.state.lost()
            if revision is not None:
                # Only our own revision: if another holds it already, nothing is deleted.
                with contextlib.suppress(nats.errors.Error, TimeoutError):
                    await kv.delete(self.key, last=revision)
                    log.info("gave the lease up (stopping)")
        finally:
            await nc.close()

    async def _sleep(self, seconds: float) -> None:
        """Sleep, waking early when asked to stop."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(min(0.1, seconds))

    async def _step(self, kv: KeyValue) -> None:
        asked_at = time.monotonic()
        revision = self.state.revision
        value = self.holder.encode()
        try:
            if revision is None:
                new = await kv.create(self.key, value)
            else:
                new = await kv.update(self.key, value, last=revision)
        except KeyWrongLastSequenceError:
            if revision is not None:
                log.warning("lost the lease: another notifier delivers now; this one waits")
                self.state.lost()
                self.changed.set()
            return
        except (nats.errors.Error, TimeoutError) as exc:
            # The cluster cannot answer now: the lease lapses by itself at held_until.
            log.info("lease %s: %s", "renewal" if revision is not None else "request", exc)
            return
        if revision is None:
            log.info("took the lease (%s %s): this notifier delivers now", self.bucket, self.key)
            self.changed.set()
        self.state.won(new, asked_at, self.ttl_s, self.margin_s)
