"""The disk outbox: durable appends, order, bounds, and ingest's use of it during outages."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson

from floodwatch.mqtt import Delivery
from ingest.outbox import Outbox
from tests.test_pipeline import TOPICS, InfluxTwin, delivery, make


def test_batches_come_back_in_order_and_survive_reopening(tmp_path: Path) -> None:
    """Appended batches are read oldest first, removed one by one, and kept across restarts."""
    box = Outbox(tmp_path / "o.sqlite", max_bytes=10**6)
    assert box.append(["a 1", "b 2"], now_ns=10**18)
    assert box.append(["c 3"], now_ns=10**18 + 5 * 10**9)
    box.close()
    box = Outbox(tmp_path / "o.sqlite", max_bytes=10**6)
    status = box.status(now_ns=10**18 + 10 * 10**9)
    assert (status.batches, status.lines, status.oldest_age_s) == (2, 3, 10.0)
    first = box.oldest()
    assert first is not None and first[1] == ["a 1", "b 2"]
    box.remove(first[0])
    second = box.oldest()
    assert second is not None and second[1] == ["c 3"]
    box.remove(second[0])
    assert box.empty and box.oldest() is None and box.status().oldest_age_s == 0.0


def test_a_full_outbox_refuses_rather_than_grows(tmp_path: Path) -> None:
    """Beyond its size limit the outbox says no, so ingest holds the batch unacknowledged."""
    box = Outbox(tmp_path / "o.sqlite", max_bytes=20)
    assert box.append(["0123456789"])
    assert not box.append(["0123456789abc"])
    assert box.status().lines == 1


def test_long_outage_spills_to_disk_acknowledges_and_drains_in_order(tmp_path: Path) -> None:
    """After outbox_after_s of outage batches go to disk and are acked; later they drain."""
    twin = InfluxTwin()
    twin.down = True
    ingest, acked, _ = make(twin)
    ingest.outbox = Outbox(tmp_path / "o.sqlite", max_bytes=10**7)
    ingest.outbox_after_s = 0.2
    first = [delivery("qh-02", {"ts": 1795000000000, "level_cm": 1.0}, 1)]
    started = time.monotonic()
    ingest.process(first)  # waits out the 0.2 s, then spills
    assert acked == [1] and time.monotonic() - started >= 0.2
    ingest.process([delivery("qh-02", {"ts": 1795000001000, "level_cm": 2.0}, 2)])
    assert acked == [1, 2]  # the outbox is in use: no waiting for the second batch
    assert twin.points == {} and ingest.outbox.status().lines == 2
    twin.down = False
    drainer = threading.Thread(target=ingest._drain_loop)
    drainer.start()
    deadline = time.monotonic() + 5
    while not ingest.outbox.empty and time.monotonic() < deadline:
        time.sleep(0.01)
    ingest.stop()
    drainer.join(5)
    assert ingest.outbox.empty
    assert [line.split(" ")[1] for line in twin.lines] == ["level_cm=1.0", "level_cm=2.0"]
    assert ingest.counters.outbox_spilled == 2 and ingest.counters.outbox_drained == 2


def test_without_an_outbox_an_outage_holds_everything(tmp_path: Path) -> None:
    """With no outbox, nothing is acknowledged during an outage, however long."""
    twin = InfluxTwin()
    twin.down = True
    ingest, acked, _ = make(twin)
    worker = threading.Thread(target=ingest.process, args=([_one()],))
    worker.start()
    time.sleep(0.3)
    ingest.stop()
    worker.join(5)
    assert acked == []


def _one() -> Delivery:
    return Delivery(TOPICS.reading("qh-02"), orjson.dumps({"level_cm": 1}), False, 1, 1, 1, 1)
