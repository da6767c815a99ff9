"""The notifier's durable queue (SQLite): one head per alert in order, held notifications,
idempotent queueing, dead letters and replay, and state that survives reopening the file."""

from __future__ import annotations

from pathlib import Path

from notify.service import backoff_s
from notify.store import NewDelivery, Store


def item(n: int, alert: str, dest: str = "hook|", not_before: int = 0) -> NewDelivery:
    return NewDelivery(
        f"n{n}", dest, dest.split("|")[0], "gis", alert, "raised", 0, b"{}", not_before
    )


def test_one_head_per_alert_in_queue_order(tmp_path: Path) -> None:
    """Only the oldest undelivered notification of each alert is handed out; the next one of
    an alert comes only once the one before it is delivered."""
    store = Store(tmp_path / "q.sqlite")
    store.commit({}, [], [item(1, "a"), item(2, "b"), item(3, "a"), item(4, "c", "mail|x@y")], 100)
    ready, later = store.due("hook|", 100, 10)
    assert [d.notification_id for d in ready] == ["n1", "n2"] and later is None
    store.delivered([ready[0].id], 101)
    assert [d.notification_id for d in store.due("hook|", 101, 10)[0]] == ["n2", "n3"]
    assert sorted(store.destinations()) == [("hook|", "hook"), ("mail|x@y", "mail")]


def test_held_notifications_wait_and_block_only_their_alert(tmp_path: Path) -> None:
    """A notification held for quiet hours waits until its time, without holding up others."""
    store = Store(tmp_path / "q.sqlite")
    store.commit({}, [], [item(1, "battery", not_before=500), item(2, "flood")], 100)
    ready, later = store.due("hook|", 100, 10)
    assert [d.notification_id for d in ready] == ["n2"] and later == 500
    assert [d.notification_id for d in store.due("hook|", 500, 10)[0]] == ["n1", "n2"]


def test_queueing_the_same_notification_twice_keeps_one(tmp_path: Path) -> None:
    """A redelivered event queues nothing new (the ids are deterministic)."""
    store = Store(tmp_path / "q.sqlite")
    store.commit({}, [], [item(1, "a")], 100)
    store.commit({}, [], [item(1, "a")], 200)
    assert store.counts() == {"pending": 1}


def test_dead_letters_are_listed_and_replayed_and_everything_survives_reopening(
    tmp_path: Path,
) -> None:
    """A dead letter keeps its error; replay queues it again; a reopened file has it all."""
    path = tmp_path / "q.sqlite"
    store = Store(path)
    store.commit({}, [], [item(1, "a"), item(2, "b")], 100)
    first = store.due("hook|", 100, 10)[0]
    store.failed([(first[0].id, "HTTP 400: bad")], dead=True)
    store.failed([(first[1].id, "connection refused")], dead=False)
    store.close()
    store = Store(path)
    [dead] = store.dead_letters()
    assert (dead.notification_id, dead.last_error, dead.attempts) == ("n1", "HTTP 400: bad", 1)
    assert store.replay(None, 300) == 1
    assert store.dead_letters() == []
    assert {d.notification_id for d in store.due("hook|", 300, 10)[0]} == {"n1", "n2"}


def test_backoff_doubles_up_to_its_cap() -> None:
    """1, 2, 4, 8 ... seconds, never above the cap."""
    assert [backoff_s(n, 1, 10) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_a_destination_whose_channel_is_gone_becomes_dead_letters(tmp_path: Path) -> None:
    """What was queued for a channel no longer in the routing file is listed, not lost."""
    store = Store(tmp_path / "q.sqlite")
    store.commit({}, [], [item(1, "a"), item(2, "b", "mail|x@y")], 100)
    assert store.abandon("hook|", "channel 'hook' is no longer in the routing file") == 1
    [dead] = store.dead_letters()
    assert dead.notification_id == "n1" and "no longer" in dead.last_error
    assert store.counts() == {"dead": 1, "pending": 1}
