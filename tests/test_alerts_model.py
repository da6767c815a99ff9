"""One alert model (alerts/state.py `Alert`, alerts/events.py `AlertEvent`) and the
acknowledgement protocol (alerts/commands.py): pure, no servers."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from alerts.commands import ACK_ERROR_CODES, AckReply, AckRequest, parse_ack_request
from alerts.events import AlertEvent
from alerts.state import Alert
from floodwatch.contract import KINDS, LIFECYCLES

T0 = 1_795_694_400 * 10**9  # 2026-11-26T12:00:00Z
M = 60 * 10**9


def _acked_flood() -> Alert:
    """An alert with every optional field set, so a field lost in a conversion shows."""
    raised = Alert.raised(
        "qh-02", "flood", T0, level=2, depth_cm=23.5, peak_cm=24.0, peak_ns=T0, episode_id="e"
    )
    return dataclasses.replace(
        raised,
        state="active_ack",
        reading_time_ns=T0 + 2 * M,
        seq=3,
        detail="why",
        who="lan",
        note="team sent",
        acked_ns=T0 + 3 * M,
        changed_ns=T0 + 3 * M,  # the last change: the event's time (at_ns below)
    )


def _event(alert: Alert, reading_time_ns: int | None) -> AlertEvent:
    return alert.event(
        "acknowledged" if reading_time_ns is None else "escalated",
        at_ns=T0 + 3 * M,
        reading_time_ns=reading_time_ns,
        street="Quoc Huong",
        level=alert.level,
        level_name="hazard",
    )


def test_every_field_of_an_alert_travels_in_its_events() -> None:
    """Nothing an alert holds is left out of its events, so a restart can rebuild it."""
    # An alert's last change is its event's own time (changed_ns travels as at_ns).
    alert_fields = {f.name for f in dataclasses.fields(Alert)} - {"changed_ns"}
    event_fields = {f.name for f in dataclasses.fields(AlertEvent)}
    assert alert_fields <= event_fields
    assert "at_ns" in event_fields


@pytest.mark.parametrize("reading_time_ns", [T0 + 2 * M, None], ids=["reading", "ack"])
def test_an_alert_comes_back_from_its_event_unchanged(reading_time_ns: int | None) -> None:
    """Alert -> AlertEvent -> JSON -> AlertEvent -> Alert gives the same alert; an
    acknowledgement (no reading) takes the reading time of the change before it."""
    alert = _acked_flood()
    event = AlertEvent.from_json(_event(alert, reading_time_ns).to_json())
    assert event.raised_ns == T0 and event.alert_id == f"qh-02:flood:{T0}"
    assert Alert.from_event(event, alert.reading_time_ns) == alert
    if reading_time_ns is not None:
        assert Alert.from_event(event) == alert


def test_event_ids_are_made_of_the_alert_the_change_and_its_time() -> None:
    """Rule 12: the reading's time, or the operator's for an acknowledgement."""
    alert = _acked_flood()
    assert _event(alert, T0 + 2 * M).event_id == f"qh-02:flood:{T0}:escalated:{T0 + 2 * M}"
    assert _event(alert, None).event_id == f"qh-02:flood:{T0}:acknowledged:{T0 + 3 * M}"


def test_a_non_flood_alert_has_level_zero_but_its_events_carry_the_sensors_level() -> None:
    """Alert.level is the flood ladder's; every event says the sensor's flood level."""
    alert = Alert.raised("qh-02", "rising", T0, level=3, depth_cm=12.0)
    assert alert.level == 0
    event = alert.event(
        "raised", at_ns=T0, reading_time_ns=T0, street="s", level=2, level_name="hazard"
    )
    assert event.level == 2 and Alert.from_event(event).level == 0


def test_an_event_stored_before_raised_ns_existed_takes_it_from_its_id() -> None:
    """Events in InfluxDB from an older version still restore."""
    doc = orjson.loads(_event(_acked_flood(), T0 + 2 * M).to_json())
    del doc["raised_ns"], doc["raised_at"]
    assert AlertEvent.from_dict(doc).raised_ns == T0


@pytest.mark.parametrize(
    ("field", "value"), [("kind", "flash"), ("change", "snoozed"), ("state", "muted")]
)
def test_an_event_of_an_unknown_kind_change_or_state_is_refused(field: str, value: str) -> None:
    """A kind this engine does not know never silently becomes another one."""
    doc = orjson.loads(_event(_acked_flood(), T0 + 2 * M).to_json())
    doc[field] = value
    with pytest.raises(ValueError, match=f"{field} '{value}'"):
        AlertEvent.from_dict(doc)
    assert "flood" in KINDS and "active_ack" in LIFECYCLES


REPLY = "floodwatch/v1/commands/ack/reply/x"


@pytest.mark.parametrize(
    ("payload", "reply_to", "reason"),
    [
        pytest.param(b"{", "", "not JSON", id="not-json"),
        pytest.param(b"[1]", "", "JSON object", id="not-object"),
        pytest.param(orjson.dumps({"alert_id": "a", "reply_to": REPLY}), REPLY, "who", id="no-who"),
        pytest.param(
            orjson.dumps({"alert_id": "a", "who": " ", "reply_to": REPLY}),
            REPLY,
            "who",
            id="blank-who",
        ),
        pytest.param(
            orjson.dumps({"alert_id": "a", "who": "w" * 201, "reply_to": REPLY}),
            REPLY,
            "200 characters",
            id="long-who",
        ),
        pytest.param(
            orjson.dumps({"alert_id": "a", "who": "w", "note": 5, "reply_to": REPLY}),
            REPLY,
            "2000 characters",
            id="note-not-text",
        ),
        pytest.param(
            orjson.dumps({"alert_id": "a", "who": "w", "reply_to": "x/#"}),
            "",
            None,
            id="wildcard-reply-ignored",
        ),
    ],
)
def test_ack_requests_refused_or_accepted(
    payload: bytes, reply_to: str, reason: str | None
) -> None:
    """Bad requests get `bad_request` and a sentence; a wildcard reply topic is never used."""
    topic, parsed = parse_ack_request(payload)
    assert topic == reply_to
    if reason is None:
        assert parsed == AckRequest("a", "w", "", "")
    else:
        assert isinstance(parsed, AckReply) and parsed.code == "bad_request"
        assert reason in parsed.error


def test_an_ack_request_round_trips() -> None:
    """What the API and `ingest ack` send is what ingest reads (the operator name trimmed)."""
    request = AckRequest("qh-02:flood:1", "lan", "team sent", REPLY)
    assert parse_ack_request(request.to_json()) == (REPLY, request)
    assert parse_ack_request(AckRequest("a", " lan ", "", REPLY).to_json())[1] == AckRequest(
        "a", "lan", "", REPLY
    )


def test_ack_replies_round_trip_with_their_events_and_codes() -> None:
    """An ok reply carries the engine's own events; a refusal its code and sentence."""
    event = _event(_acked_flood(), None)
    done = AckReply(True, (event,))
    assert AckReply.from_json(done.to_json()) == done
    assert AckReply.from_json(AckReply(True).to_json()) == AckReply(True)
    for code in ACK_ERROR_CODES:
        refused = AckReply.refused(code, "because")
        assert AckReply.from_json(refused.to_json()) == refused


@pytest.mark.parametrize(
    "payload",
    [
        b"nope",
        b"{}",
        b'{"ok": false, "code": "teapot", "error": "x"}',
        b'{"ok": true, "events": 1}',
    ],
)
def test_an_unreadable_ack_reply_is_a_value_error(payload: bytes) -> None:
    """A reply from another version is refused plainly, never taken for a success."""
    with pytest.raises(ValueError, match="acknowledgement reply"):
        AckReply.from_json(payload)
