"""bench/notify: the notifier under a storm, through the real broker and a real webhook receiver.

1. Storm latency: 1,000 street sensors' flood alerts escalate at once (1,000 `escalated`
   events published as fast as the broker takes them); for each, the time from publishing
   the event to the webhook receiver getting its notification. p50, p99 and the time until
   the last arrived. Also the same 1,000 events paced at 200 per second.
2. Backlog after an hour's outage: the receiver is down while `--backlog` events (default
   12,000: 1,000 alerts, about one event every 5 minutes each for an hour) are queued on disk;
   then it comes back, and the queue's throughput (notifications per second until the last is
   delivered) is measured.

Each part runs `--runs` times (default 3) with a fresh notifier; medians are printed.
Run: .venv/bin/python -m bench.notify [--runs 3] [--backlog 12000] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from alerts.events import AlertEvent
from bench.alerts_latency import registry_file
from floodwatch.localservices import Service, mosquitto_service, running
from floodwatch.mqtt import MqttConnection
from tests.notify_process import NotifierProcess, notifier_env
from tests.notify_servers import HttpReceiver

T0 = 1_796_000_000 * 10**9
SENSORS = 1000


def routing(url: str, concurrency: int) -> str:
    return f"""
[channels.gis]
type = "webhook"
url = "{url}"
secret = "bench-secret"
concurrency = {concurrency}

[recipients.gis]
channels = ["gis"]

[[rules]]
kinds = ["flood"]
min_level = 1
notify = ["gis"]
"""


def event(i: int, seq: int, change: str, level: int) -> AlertEvent:
    sensor = f"s{i:04d}"
    raised = T0
    at = T0 + seq * 10**9
    return AlertEvent(
        event_id=f"{sensor}:flood:{raised}:{change}:{at}",
        alert_id=f"{sensor}:flood:{raised}",
        seq=seq,
        sensor_id=sensor,
        street="Bench",
        kind="flood",
        change=change,  # type: ignore[arg-type]
        state="active_unack",
        level=level,
        level_name=("normal", "flooded", "hazard", "impassable", "closed")[level],
        at_ns=at,
        raised_ns=raised,
        reading_time_ns=at,
        depth_cm=10.0 * level + 3,
    )


class Run(NotifierProcess):
    """One notifier with its own state file, client id and topic root."""

    def __init__(self, broker: Service, work: Path, name: str, url: str, concurrency: int) -> None:
        self.root = name
        self.state = work / f"{name}.sqlite"
        (work / f"{name}.toml").write_text(routing(url, concurrency))
        # A login of its own per notifier: the broker binds `notify` to one client id.
        login = broker.take_login("notify").username or ""
        env = notifier_env(
            name,
            work / f"{name}.toml",
            self.state,
            MQTT_URL=broker.url(login),
            CLIENT_ID=login,
            REGISTRY=str(work / "registry.geojson"),
            RETRY_MAX="2",
        )
        super().__init__(env, work, name)
        self.start()

    def pending(self) -> int:
        with sqlite3.connect(f"file:{self.state}?mode=ro", uri=True) as db:
            row = db.execute("SELECT count(*) FROM deliveries WHERE status = 'pending'").fetchone()
        return int(row[0])


def publish(
    conn: MqttConnection, root: str, events: list[AlertEvent], rate: float
) -> dict[str, int]:
    """Publish; return each notification's alert id -> when its event was published (ns)."""
    sent: dict[str, int] = {}
    start = time.monotonic()
    for n, e in enumerate(events):
        if rate:
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        sent[e.event_id] = time.time_ns()
        conn.publish(f"{root}/v1/events/{e.sensor_id}", e.to_json(), qos=1)
    return sent


def storm(
    broker: Service, work: Path, name: str, concurrency: int, rate: float
) -> tuple[float, float, float]:
    receiver = HttpReceiver().start()
    run = Run(broker, work, name, receiver.url, concurrency)
    conn = MqttConnection(broker.endpoint("admin"))
    conn.start()
    try:
        events = [event(i, 2, "escalated", 3) for i in range(SENSORS)]
        sent = publish(conn, name, events, rate)
        receiver.wait_for(lambda got: len(got) >= SENSORS, 120, "the storm's notifications")
        import orjson

        latencies = []
        for request in receiver.accepted:
            doc = orjson.loads(request.body)
            latencies.append((request.received_ns - sent[doc["alert"]["event_id"]]) / 1e6)
        last = (max(r.received_ns for r in receiver.accepted) - min(sent.values())) / 1e6
    finally:
        conn.stop()
        run.stop()
        receiver.stop()
    latencies.sort()
    return statistics.median(latencies), latencies[int(0.99 * (len(latencies) - 1))], last


def backlog(
    broker: Service, work: Path, name: str, concurrency: int, count: int
) -> tuple[float, float]:
    receiver = HttpReceiver()  # down
    run = Run(broker, work, name, receiver.url, concurrency)
    conn = MqttConnection(broker.endpoint("admin"))
    conn.start()
    try:
        per_alert = max(1, count // SENSORS)
        events = [
            event(
                i,
                seq,
                "raised" if seq == 1 else ("escalated" if seq % 2 else "deescalated"),
                1 + seq % 2,
            )
            for seq in range(1, per_alert + 1)
            for i in range(SENSORS)
        ]
        queued_start = time.monotonic()
        publish(conn, name, events, 0)
        deadline = time.monotonic() + 300
        while run.pending() < len(events):
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {run.pending()} of {len(events)} queued")
            time.sleep(0.2)
        queue_s = time.monotonic() - queued_start
        start = time.monotonic()
        receiver.start()
        receiver.wait_for(lambda got: len(got) >= len(events), 600, "the backlog")
        drain_s = time.monotonic() - start
    finally:
        conn.stop()
        run.stop()
        receiver.stop()
    return len(events) / queue_s, len(events) / drain_s


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backlog", type=int, default=12_000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="fw-notify-") as tmp:
        work = Path(tmp)
        registry_file(work / "registry.geojson", SENSORS)
        with running(mosquitto_service(work, instances={"notify": 50})) as (broker,):
            for label, rate in (("burst", 0.0), ("200/s", 200.0)):
                results = [
                    storm(broker, work, f"storm{label[0]}{n}", args.concurrency, rate)
                    for n in range(args.runs)
                ]
                p50 = statistics.median(r[0] for r in results)
                p99 = statistics.median(r[1] for r in results)
                last = statistics.median(r[2] for r in results)
                print(
                    f"storm, 1,000 alerts escalating ({label}): event -> webhook p50 {p50:.0f} ms, "
                    f"p99 {p99:.0f} ms, last after {last:.0f} ms (medians of {args.runs}; "
                    f"runs p99: {', '.join(f'{r[1]:.0f}' for r in results)})",
                    flush=True,
                )
            drains = [
                backlog(broker, work, f"backlog{n}", args.concurrency, args.backlog)
                for n in range(args.runs)
            ]
            print(
                f"backlog of {args.backlog:,} after an outage: queued at "
                f"{statistics.median(d[0] for d in drains):,.0f}/s, delivered at "
                f"{statistics.median(d[1] for d in drains):,.0f}/s when the receiver came back "
                f"(medians of {args.runs}; runs: {', '.join(f'{d[1]:,.0f}' for d in drains)})",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
