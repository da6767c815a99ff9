"""Fault test 4 of issue 14: SIGKILL the API replica serving a page and two SSE clients, on
the clustered stack (floodwatch.clusterstack: 3 NATS nodes, HAProxy's MQTT and API fronts, an
ingest worker `python -m ingest --cluster`, 2 API replicas, influxd, all real processes). Both
continue through the front door: the SSE clients resume with Last-Event-ID and miss no event,
the page shows the alerts raised after the kill and its feed-lost banner clears.

The sensors publish through the MQTT front with their own logins (MQTT 3.1.1); the worker
judges them and publishes the retained `alerts/{id}` payloads; an admin subscriber records
those payloads in the broker's order, from which the test computes the ids every replica
gives their events.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx
import orjson
import pytest

from api.eventlog import event_id
from api.feed import alert_event_key
from api.live import parse_alert_payload
from floodwatch.clusterstack import (
    ClusterStack,
    cluster_credential_files,
    cluster_service_names,
    stack_services,
    start_cluster_stack,
)
from floodwatch.mqtt import Delivery, MqttConnection
from floodwatch.registry import SHIPPED_REGISTRY, load_registry
from floodwatch.settings import MQTT_V311
from floodwatch.stack import main as stack_main
from floodwatch.stack import stack_document
from floodwatch.topics import Topics
from tests.test_api_browser import CHROMIUM, LAUNCH_ARGS
from tests.test_api_live import SseReader
from tests.test_api_support import wait_for

REGISTRY = load_registry(SHIPPED_REGISTRY)
TOPICS = Topics("floodwatch")
SENSORS = ("qh-02", "qh-03")  # one street: thresholds 10, 20, 30, 50 cm
TIME_SCALE = 60.0

pytestmark = [pytest.mark.services, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterStack]:
    data = tmp_path_factory.mktemp("clusterstack")
    with start_cluster_stack(
        data, workers=1, api_replicas=2, simulator=False, speed=str(TIME_SCALE)
    ) as running:
        yield running


@dataclass
class Street:
    """The sensors, publishing through the MQTT front, and a watcher of ingest's alerts."""

    stack: ClusterStack
    sensors: dict[str, MqttConnection] = field(default_factory=dict)
    watcher: MqttConnection | None = None
    # Every alerts/{id} payload the worker published, per sensor, in the broker's order.
    published: dict[str, list[bytes]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Street:
        front = self.stack.mqtt_front
        self.watcher = MqttConnection(
            replace(front.endpoint("admin"), protocol=MQTT_V311),
            subscriptions=[(f"{TOPICS.base}/alerts/+", 1)],
            on_delivery=self._alert,
        )
        self.watcher.start(timeout_s=20)
        for sensor_id in SENSORS:
            conn = MqttConnection(replace(front.endpoint(sensor_id), protocol=MQTT_V311), sensor_id)
            conn.start(timeout_s=20)
            self.sensors[sensor_id] = conn
        return self

    def __exit__(self, *exc: object) -> None:
        for conn in [*self.sensors.values(), *([self.watcher] if self.watcher else [])]:
            conn.stop()

    def _alert(self, delivery: Delivery) -> None:
        sensor_id = delivery.topic.rsplit("/", 1)[1]
        with self.lock:
            self.published.setdefault(sensor_id, []).append(delivery.payload)

    def readings(self, levels_cm: list[float]) -> None:
        """Each level from every sensor, acknowledged by the broker."""
        for level in levels_cm:
            for sensor_id, conn in self.sensors.items():
                payload = orjson.dumps({"ts": time.time_ns() // 10**6, "level_cm": level})
                assert conn.publish_and_wait(TOPICS.reading(sensor_id), payload, timeout_s=10)

    def alert_levels(self) -> dict[str, int]:
        """Each of our sensors' level in the worker's latest alerts payload."""
        with self.lock:
            latest = {sid: self.published.get(sid, [b""])[-1] for sid in SENSORS}
        return {
            sid: int(orjson.loads(payload).get("level", 0)) if payload else 0
            for sid, payload in latest.items()
        }

    def expected_ids(self) -> set[str]:
        """The ids every API replica gives the alert events these payloads make."""
        ids = set()
        with self.lock:
            published = {sid: list(payloads) for sid, payloads in self.published.items()}
        for sensor_id, payloads in published.items():
            previous, previous_key = b"", 0
            for payload in payloads:
                parsed = parse_alert_payload(payload, sensor_id)
                key, source = alert_event_key(sensor_id, parsed, payload, previous, previous_key)
                if payload != previous:
                    ids.add(event_id("alert", key, source))
                previous, previous_key = payload, key
        return ids


class SseClient(threading.Thread):
    """A plain SSE client through the API front: reconnects with Last-Event-ID when dropped."""

    def __init__(self, url: str, comeback: threading.Event | None = None) -> None:
        super().__init__(daemon=True)
        self.url = url
        # Set: reconnect at once after a drop; else wait until it is set (a client that was
        # away a while).
        self.comeback = comeback
        self.events: list[tuple[str, str, dict[str, object]]] = []  # (id, event, data)
        self.connections: list[tuple[float, str]] = []  # (when, replica)
        self.sent_ids: list[str | None] = []  # Last-Event-ID of each connection
        self.last_id: str | None = None
        self.drops = 0  # streams that ended
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
            with (
                contextlib.suppress(httpx.HTTPError),
                httpx.stream(
                    "GET", f"{self.url}/v1/stream", headers=headers, timeout=30
                ) as response,
            ):
                replica = response.headers.get("x-floodwatch-replica", "?")
                self.connections.append((time.monotonic(), replica))
                self.sent_ids.append(self.last_id)
                self._read(response)
            self.drops += 1
            self.stop.wait(0.1)  # EventSource waits its `retry`; a short one here
            if self.comeback is not None:
                self.comeback.wait(60)

    def _read(self, response: httpx.Response) -> None:
        reader = SseReader(response.iter_lines())
        while not self.stop.is_set():
            try:
                event = reader.next(timeout_s=3600)
            except AssertionError:  # the stream ended: its replica is gone
                return
            if event.id is not None:
                self.last_id = event.id
            self.events.append((event.id or "", event.event, event.data))

    def alert_ids(self) -> list[str]:
        return [eid for eid, event, _ in self.events if event == "alert"]


def _rise(start: float, stop: float, steps: int) -> list[float]:
    return [start + (stop - start) * k / (steps - 1) for k in range(steps)]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")
def test_killing_the_api_replica_serving_a_page_and_an_sse_client(
    stack: ClusterStack,
) -> None:
    from playwright.sync_api import sync_playwright

    # Both clients on api-1 (the front sends api-2 nothing new meanwhile), then api-2 takes
    # new connections again, as after a rolling upgrade.
    stack.set_api_state("api-2", "drain")
    page_streams: list[tuple[float, str]] = []
    with sync_playwright() as playwright, Street(stack) as street:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        sse = SseClient(stack.api_url)
        comeback = threading.Event()
        late = SseClient(stack.api_url, comeback)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900}, bypass_csp=True)
            page.on(
                "response",
                lambda r: (
                    page_streams.append(
                        (time.monotonic(), r.headers.get("x-floodwatch-replica", "?"))
                    )
                    if r.url.endswith("/v1/stream")
                    else None
                ),
            )
            page.goto(stack.api_url + "/")
            page.wait_for_selector("body[data-loaded=true]")
            page.wait_for_selector("#status[data-state=live]")
            # Every state the status banner takes from now on.
            page.evaluate(
                "window.__states = []; new MutationObserver(() => window.__states.push("
                "document.getElementById('status').dataset.state)).observe("
                "document.getElementById('status'), {attributes: true})"
            )
            sse.start()
            late.start()
            wait_for(
                lambda: len(sse.connections) == len(late.connections) == 1, 20, "the SSE streams"
            )
            assert [r for _, r in page_streams] == ["api-1"]
            assert sse.connections[0][1] == late.connections[0][1] == "api-1"
            stack.set_api_state("api-2", "ready")

            # A flood rises to level 2 (10 and 20 cm crossed) while all watch api-1.
            street.readings(_rise(2.0, 24.0, 8))
            wait_for(
                lambda: street.alert_levels() == dict.fromkeys(SENSORS, 2), 30, "level 2 alerts"
            )
            before = street.expected_ids()
            assert len(before) >= 2
            wait_for(
                lambda: before <= set(sse.alert_ids()) and before <= set(late.alert_ids()),
                20,
                "the alerts before the kill",
            )

            api1 = stack.api("api-1")
            assert api1.proc is not None
            with page.expect_response(
                lambda r: r.url.endswith("/v1/stream"), timeout=30_000
            ) as new_stream:
                killed_at, killed_wall = time.monotonic(), time.time()
                api1.proc.send_signal(signal.SIGKILL)
                api1.proc.wait(10)
                # The flood goes on to level 4 (30 and 50 cm) while the clients are cut off.
                street.readings(_rise(26.0, 56.0, 8))
                wait_for(
                    lambda: street.alert_levels() == dict.fromkeys(SENSORS, 4),
                    30,
                    "level 4 alerts",
                )
            expected = street.expected_ids()
            after = expected - before
            assert len(after) >= 2
            # The late client, cut off since the kill, missed the flood's rise; it resumes now
            # and gets what it missed from api-2's buffer.
            wait_for(lambda: late.drops >= 1, 30, "the late client's stream to end")
            missed = expected - set(late.alert_ids())
            assert len(missed) >= 2
            comeback.set()
            wait_for(lambda: expected <= set(late.alert_ids()), 30, "the late client's replay")
            assert late.connections[1][1] == "api-2" and late.sent_ids[1] is not None

            wait_for(lambda: len(sse.connections) >= 2, 30, "the SSE client's new stream")
            wait_for(lambda: expected <= set(sse.alert_ids()), 30, "every alert event")
            resumed_s = sse.connections[1][0] - killed_at
            assert sse.connections[1][1] == "api-2"
            assert sse.sent_ids[1] is not None  # it resumed with Last-Event-ID
            got = sse.alert_ids()
            duplicates = len(got) - len(set(got))
            assert not [e for c in (sse, late) for _, e, _ in c.events if e == "gap"]

            # The page: reconnected through the front to api-2, the banner cleared, and the
            # level-4 flood raised after the kill shown on its sensors.
            response = new_stream.value
            timing = response.request.timing  # ms: epoch start, then relative
            page_resumed_s = (timing["startTime"] + timing["responseStart"]) / 1000 - killed_wall
            assert response.headers.get("x-floodwatch-replica") == "api-2"
            page.wait_for_selector("#status[data-state=live]", timeout=30_000)
            for sensor_id in SENSORS:
                page.wait_for_selector(f'path.sensor-{sensor_id}[data-level="4"]', timeout=30_000)
            states = page.evaluate("window.__states")
            assert "retrying" in states and states[-1] == "live", states
        finally:
            for client in (sse, late):
                client.stop.set()
            comeback.set()
            browser.close()
    print(
        f"\nfault 4: SSE client resumed on api-2 {resumed_s:.2f} s after the SIGKILL, the page "
        f"{page_resumed_s:.2f} s; alert events {len(before)} before and {len(after)} after the "
        f"kill, all received; the late client got {len(missed)} it missed from the replay; "
        f"{duplicates} repeated on resume"
    )


def test_stack_json_names_every_cluster_service(stack: ClusterStack) -> None:
    """stack.json's cluster entries, written by the single-node stack's writer: every service
    the issue names, with a live PID, its ports and URL, and the credential files."""
    doc = stack_document(
        "cluster", stack.data, stack_services(stack), cluster_credential_files(stack)
    )
    services = doc["services"]
    assert isinstance(services, dict)
    assert list(services) == cluster_service_names(workers=1, api_replicas=2)
    for name, entry in services.items():
        assert entry["name"] == name and entry["ports"] and entry["url"], entry
    alive = [name for name, entry in services.items() if name != "api-1"]  # killed above, maybe
    for name in alive:
        os.kill(int(services[name]["pid"]), 0)  # raises if the process is gone
    assert services["api-front"]["url"] == stack.api_url + "/"
    assert services["nats-1"]["ports"].keys() == {"client", "mqtt", "cluster", "monitor"}
    credentials = doc["credentials"]
    assert isinstance(credentials, dict)
    for key in ("services", "sensors", "nats_accounts"):
        assert Path(credentials[key]).is_file(), key


@pytest.mark.parametrize(
    "argv", [["--workers", "-1"], ["--api-replicas", "0"], ["--partitions", "0"]]
)
def test_stack_cluster_refuses_impossible_counts(argv: list[str], tmp_path: Path) -> None:
    assert stack_main(["--cluster", "--data", str(tmp_path), *argv]) == 2
