"""The seam between the API and the alert engine: the `AlertSource` protocol and
`EngineAlerts`, which implements it from what the engine (in the ingest process) publishes.

The alert routes (`/v1/alerts*`, `/v1/events`) see only `AlertSource`. `RetainedAlerts`, the
read side, serves:
- current alerts from the retained `{root}/v1/alerts/{sensor}` payloads held by api.live;
- past alerts from InfluxDB measurement `alert_event` and flood episodes from
  `flood_episode`, as the engine writes them (README, InfluxDB schema).
`EngineAlerts` adds acknowledgements, sent to the engine on `{root}/v1/commands/ack`: the
engine alone changes alert state, so the API never publishes an alert itself.
"""

from __future__ import annotations

import contextlib
import queue
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any, Literal, Protocol, assert_never

import anyio.to_thread
import orjson

from alerts.commands import AckReply, AckRequest
from api import history
from api.errors import AlertConflict, AlertNotFound, BadParameter, BrokerUnavailable
from api.live import Alert, LiveState, alert_level, alert_state, level_name
from api.times import iso, to_ns
from floodwatch.contract import ACTIVE_STATES
from floodwatch.errors import BrokerError
from floodwatch.influx import InfluxClient
from floodwatch.mqtt import Delivery
from floodwatch.registry import Sensor
from floodwatch.topics import Topics

if TYPE_CHECKING:  # api.feed imports this module
    from api.feed import LiveFeed

StateFilter = Literal["active", "all"]
# Payload keys tried, in order, for the time an alert last changed (the engine's retained
# payload has acked_at and raised_at; alert_event rows have at_ns).
_CHANGED_KEYS = ("changed_at", "acked_at", "at_ns", "updated_at", "time", "raised_at")
# How long an acknowledgement waits for the alert engine's answer.
ACK_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One alert as a source reports it; `payload` is the engine's object, untouched."""

    alert_id: str
    sensor_id: str
    kind: str
    level: int | None
    level_name: str | None
    state: str | None
    changed_at_ns: int | None
    payload: Mapping[str, Any]

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


@dataclass(frozen=True, slots=True)
class Acknowledgement:
    by: str  # the operator key's name
    note: str
    at_ns: int


@dataclass(frozen=True, slots=True)
class FloodEpisode:
    """A flood event of the ward: from the first street sensor entering level 1 until the last
    one clears (CONTRACT section 3; the alert engine's `flood_episode`)."""

    event_id: str
    start_ns: int
    end_ns: int | None
    peak_cm: float | None
    peak_ns: int | None
    peak_sensor: str | None
    max_level: int | None
    max_level_name: str | None
    minutes_to_peak: float | None
    minutes_to_drain: float | None
    streets: tuple[str, ...] = ()
    sensors: tuple[str, ...] = ()


class AlertSource(Protocol):
    """What the alert routes need; the alert engine implements it (see RetainedAlerts)."""

    async def list(self, *, state: StateFilter, since_ns: int | None) -> Sequence[AlertRecord]:
        """Alerts, newest change first: active ones, or (`all`) also cleared and past ones."""
        ...

    async def get(self, alert_id: str) -> AlertRecord | None:
        """One alert by id, current or past; None if unknown."""
        ...

    async def acknowledge(self, alert_id: str, ack: Acknowledgement) -> AlertRecord:
        """Acknowledge; raise AlertNotFound, or AlertConflict if already acknowledged."""
        ...

    async def episodes(
        self, *, since_ns: int | None, until_ns: int | None, sensor_id: str | None
    ) -> Sequence[FloodEpisode]:
        """Flood events that started in [since, until), oldest first; with `sensor_id`, only
        those the sensor took part in."""
        ...

    async def changes(self, *, since_ns: int, kinds: Sequence[str]) -> Sequence[AlertRecord]:
        """Every stored change of alerts of these kinds since `since_ns`, oldest first: each
        the alert as the change left it, the engine's event (with its `seq`) as payload."""
        ...


def _time_ns(value: object) -> int | None:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            dt = datetime.fromisoformat(value)
            if dt.tzinfo is not None:
                return to_ns(dt)
    if type(value) is int and value > 10**17:  # epoch nanoseconds
        return value
    return None


def record_from_payload(sensor_id: str, alert: Alert, received_at_ns: int | None) -> AlertRecord:
    changed = next(
        (t for t in (_time_ns(alert.get(k)) for k in _CHANGED_KEYS) if t is not None),
        received_at_ns,
    )
    name = alert.get("level_name")
    kind = alert.get("kind")
    return AlertRecord(
        alert_id=str(alert.get("alert_id")),
        sensor_id=sensor_id,
        kind=kind if isinstance(kind, str) else "unknown",
        level=alert_level(alert),
        level_name=name if isinstance(name, str) else None,
        state=alert_state(alert),
        changed_at_ns=changed,
        payload=alert,
    )


def alert_json(record: AlertRecord, sensor: Sensor | None, tz: tzinfo = UTC) -> dict[str, Any]:
    """An alert as the API shows it (schemas.AlertOut), its times in zone `tz`."""
    payload = record.payload
    acked_by = payload.get("acked_by", payload.get("who"))
    note = payload.get("note")
    acked_at = _time_ns(payload.get("acked_at", payload.get("acked_ns")))
    name = record.level_name
    if name is None and record.level is not None and sensor is not None:
        name = level_name(sensor, record.level)
    return {
        "alert_id": record.alert_id,
        "sensor": record.sensor_id,
        "street": sensor.street if sensor is not None else None,
        "street_en": sensor.street_en if sensor is not None else None,
        "kind": record.kind,
        "level": record.level,
        "level_name": name,
        "state": record.state,
        "active": record.active,
        "changed_at": iso(record.changed_at_ns, tz) if record.changed_at_ns is not None else None,
        "acked_by": acked_by if isinstance(acked_by, str) else None,
        "acked_at": iso(acked_at, tz) if acked_at is not None else None,
        "note": note if isinstance(note, str) else None,
        "payload": dict(payload),
    }


def _newest_first(records: Sequence[AlertRecord]) -> list[AlertRecord]:
    return sorted(records, key=lambda r: (-(r.changed_at_ns or 0), r.alert_id))


class RetainedAlerts:
    """The read side of an AlertSource: retained MQTT payloads in memory, history from
    InfluxDB. EngineAlerts adds acknowledgements."""

    def __init__(self, state: LiveState, influx: InfluxClient | None) -> None:
        self._state = state
        self._influx = influx

    def _current(self) -> list[AlertRecord]:
        return [
            record_from_payload(now.sensor.id, alert, now.alerts_at_ns or None)
            for now, alert in self._state.alerts()
        ]

    async def _past(self, since_ns: int | None, alert_id: str | None = None) -> list[AlertRecord]:
        if self._influx is None:
            return []
        rows = await anyio.to_thread.run_sync(
            history.alert_events, self._influx, since_ns, alert_id
        )
        latest: dict[str, dict[str, Any]] = {}
        for row in rows:  # oldest first, so the last row of an alert is its latest state
            if isinstance(row.get("alert_id"), str):
                latest[row["alert_id"]] = row
        return [
            record_from_payload(str(row.get("sensor", "")), row, int(row["time"]))
            for row in latest.values()
        ]

    async def list(self, *, state: StateFilter, since_ns: int | None) -> Sequence[AlertRecord]:
        records = self._current()
        if state == "all":
            held = {r.alert_id for r in records}
            records += [r for r in await self._past(since_ns) if r.alert_id not in held]
        else:
            records = [r for r in records if r.active]
        if since_ns is not None:
            records = [r for r in records if (r.changed_at_ns or 0) >= since_ns]
        return _newest_first(records)

    async def get(self, alert_id: str) -> AlertRecord | None:
        for record in self._current():
            if record.alert_id == alert_id:
                return record
        past = await self._past(None, alert_id)
        return past[-1] if past else None

    async def changes(self, *, since_ns: int, kinds: Sequence[str]) -> Sequence[AlertRecord]:
        if self._influx is None:
            return []
        rows = await anyio.to_thread.run_sync(
            history.alert_events, self._influx, since_ns, None, kinds
        )
        return [
            record_from_payload(str(row.get("sensor", "")), row, int(row["time"]))
            for row in rows
            if isinstance(row.get("alert_id"), str)
        ]

    async def episodes(
        self, *, since_ns: int | None, until_ns: int | None, sensor_id: str | None
    ) -> Sequence[FloodEpisode]:
        if self._influx is None:
            return []
        rows = await anyio.to_thread.run_sync(
            history.flood_events, self._influx, since_ns, until_ns
        )
        episodes = [_episode(row) for row in rows]
        if sensor_id is not None:
            episodes = [e for e in episodes if sensor_id in e.sensors]
        return episodes


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _strings(value: object) -> tuple[str, ...]:
    """A JSON array of strings stored in a string field (line protocol has no lists)."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            items = orjson.loads(value)
            if isinstance(items, list):
                return tuple(str(v) for v in items)
    return ()


def _episode(row: Mapping[str, Any]) -> FloodEpisode:
    start = int(row["time"])
    episode_id = row.get("episode_id")
    level = row.get("max_level")
    name = row.get("max_level_name")
    return FloodEpisode(
        event_id=episode_id if isinstance(episode_id, str) else f"flood:{start}",
        start_ns=start,
        end_ns=_time_ns(row.get("end_ns")),
        peak_cm=_number(row.get("peak_cm")),
        peak_ns=_time_ns(row.get("peak_ns")),
        peak_sensor=str(row["peak_sensor"]) if row.get("peak_sensor") is not None else None,
        max_level=level if type(level) is int else None,
        max_level_name=name if isinstance(name, str) else None,
        minutes_to_peak=_number(row.get("minutes_to_peak")),
        minutes_to_drain=_number(row.get("minutes_to_drain")),
        streets=_strings(row.get("streets")),
        sensors=_strings(row.get("sensors")),
    )


class EngineAlerts(RetainedAlerts):
    """The AlertSource in production: reads as RetainedAlerts does, and acknowledges through
    the alert engine, which lives in the ingest process: the request goes out on
    `{root}/v1/commands/ack` and ingest answers on a reply topic of this API's own; the new
    state then arrives like any other, on the retained `alerts/{sensor}` topic."""

    def __init__(
        self,
        state: LiveState,
        influx: InfluxClient | None,
        feed: LiveFeed,
        topics: Topics,
        timeout_s: float = ACK_TIMEOUT_S,
    ) -> None:
        super().__init__(state, influx)
        self._topics = topics
        self._timeout_s = timeout_s
        self._replies: dict[str, queue.Queue[bytes]] = {}
        self._reply_base = f"{topics.ack_commands}/reply/api-{uuid.uuid4().hex[:12]}"
        # The live feed's connection carries the requests and replies: the broker binds the
        # API's login to one client id, so a second connection would take over the first.
        self._feed = feed
        feed.route(self._reply_base + "/+", self._on_reply)

    def _on_reply(self, delivery: Delivery) -> None:
        waiting = self._replies.get(delivery.topic.rsplit("/", 1)[1])
        if waiting is not None:
            waiting.put(delivery.payload)

    def _ask(self, alert_id: str, ack: Acknowledgement) -> AckReply:
        request_id = uuid.uuid4().hex
        answers: queue.Queue[bytes] = queue.Queue()
        self._replies[request_id] = answers
        try:
            request = AckRequest(alert_id, ack.by, ack.note, f"{self._reply_base}/{request_id}")
            try:
                self._feed.publish(self._topics.ack_commands, request.to_json())
            except BrokerError as exc:
                raise BrokerUnavailable(f"{exc}; try again once it is back") from None
            try:
                payload = answers.get(timeout=self._timeout_s)
            except queue.Empty:
                raise BrokerUnavailable(
                    f"the alert engine (python -m ingest) did not answer within "
                    f"{self._timeout_s:g} s; check that ingest runs, then try again"
                ) from None
        finally:
            self._replies.pop(request_id, None)
        try:
            return AckReply.from_json(payload)
        except ValueError as exc:
            raise BrokerUnavailable(
                f"the alert engine's answer could not be read ({exc}); run the same Floodwatch "
                "version for ingest and the API"
            ) from None

    async def acknowledge(self, alert_id: str, ack: Acknowledgement) -> AlertRecord:
        # Only a current alert goes to the engine; the others are answered here at once.
        if not any(r.alert_id == alert_id for r in self._current()):
            if await self._past(None, alert_id):
                raise AlertConflict(
                    f"alert {alert_id!r} is no longer current (it is only in the history), "
                    "so it cannot be acknowledged"
                )
            raise AlertNotFound(f"no alert {alert_id!r}; list current ones with GET /v1/alerts")
        answer = await anyio.to_thread.run_sync(self._ask, alert_id, ack)
        match answer.code:
            case None:
                pass
            case "unknown_alert":
                raise AlertNotFound(answer.error)
            case "not_ready":
                raise BrokerUnavailable(answer.error)
            case "bad_request":
                raise BadParameter("note", answer.error)
            case _:
                assert_never(answer.code)
        if not answer.events:  # ok, but nothing changed
            current = await self.get(alert_id)
            raise AlertConflict(
                f"alert {alert_id!r} is already acknowledged"
                + (f" by {current.payload.get('who')}" if current is not None else "")
            )
        event = answer.events[-1]
        payload = {
            "alert_id": alert_id,
            "kind": event.kind,
            "level": event.level,
            "level_name": event.level_name,
            "state": event.state,
            "who": event.who,
            "note": event.note,
            "acked_at": iso(ack.at_ns),
        }
        return record_from_payload(event.sensor_id, payload, ack.at_ns)

    def close(self) -> None:
        """Nothing of its own to close: the live feed owns the connection."""
