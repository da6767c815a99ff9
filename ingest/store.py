"""Where a reading is stored: the InfluxDB schema (measurements, tags, fields) and batch writes
that keep the good lines of a batch when InfluxDB refuses some of them.

Measurements (nanosecond timestamps; documented in the README):
- water_level    tag sensor; fields level_cm, distance_mm, battery_v, rssi, seq, ts_from_receipt
- sensor_status  tag sensor; field online
- deadletter     tag code; fields topic, payload, payload_encoding, reason

Only `sensor` is a tag on readings, so a replayed reading (same sensor, same time) lands on the
same series and timestamp and overwrites itself, whatever the registry says about streets.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

from floodwatch.contract import Reading, Rejection, StatusChange
from floodwatch.influx import InfluxClient, WriteRefused
from ingest.line_protocol import encode_point, escape_tag_value

# A dead letter's payload is kept whole up to this size, and truncated (and said so) beyond.
DEADLETTER_PAYLOAD_CHARS = 16_384

_series_prefix: dict[str, str] = {}

# Sensors report to a millimetre or a tenth of a centimetre, so the same few thousand values
# recur; their text is remembered rather than derived again (a float's repr is the costliest
# step of a line). Bounded, so a stream of novel values cannot grow it without end.
_float_texts: dict[float, str] = {}
FLOAT_TEXTS_MAX = 100_000


def _float_text(x: float) -> str:
    text = _float_texts.get(x)
    if text is None:
        text = repr(x)
        # 0.0 and -0.0 are equal keys with different texts, and so are 1 and 1.0: only
        # non-zero floats are remembered.
        if type(x) is float and x != 0.0 and len(_float_texts) < FLOAT_TEXTS_MAX:
            _float_texts[x] = text
    return text


def reading_line(r: Reading) -> str:
    """The hot path: one reading as line protocol, without generic escaping per call."""
    sensor_id, time_ns, level_cm, distance_mm, battery_v, rssi, seq, from_receipt = r
    prefix = _series_prefix.get(sensor_id)
    if prefix is None:
        prefix = _series_prefix.setdefault(
            sensor_id, f"water_level,sensor={escape_tag_value(sensor_id)} level_cm="
        )
    if distance_mm is None and battery_v is not None and rssi is not None and seq is not None:
        # What sensors usually send, in one format: faster than field by field.
        tail = ",ts_from_receipt=true" if from_receipt else ""
        level, battery = _float_text(level_cm), _float_text(battery_v)
        return f"{prefix}{level},battery_v={battery},rssi={rssi}i,seq={seq}i{tail} {time_ns}"
    line = prefix + _float_text(level_cm)
    if distance_mm is not None:
        line += f",distance_mm={_float_text(distance_mm)}"
    if battery_v is not None:
        line += f",battery_v={_float_text(battery_v)}"
    if rssi is not None:
        line += f",rssi={rssi}i"
    if seq is not None:
        line += f",seq={seq}i"
    if from_receipt:
        line += ",ts_from_receipt=true"
    return f"{line} {time_ns}"


def status_line(s: StatusChange) -> str:
    return encode_point("sensor_status", {"sensor": s.sensor_id}, {"online": s.online}, s.time_ns)


def deadletter_line(rej: Rejection, nth: int = 0) -> str:
    """`nth` spreads dead letters received in the same nanosecond so none overwrites another."""
    try:
        text, encoding = rej.payload.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(rej.payload).decode("ascii"), "base64"
    if len(text) > DEADLETTER_PAYLOAD_CHARS:
        text, encoding = text[:DEADLETTER_PAYLOAD_CHARS], encoding + "-truncated"
    # Line protocol cannot carry these inside strings; keep them visible as escapes.
    text = text.replace("\r", "\\r").replace("\n", "\\n").replace("\x00", "\\0")
    topic = rej.topic.replace("\n", "\\n").replace("\r", "\\r").replace("\x00", "\\0")
    reason = rej.reason.replace("\n", " ").replace("\r", " ").replace("\x00", "\\0")
    return encode_point(
        "deadletter",
        {"code": rej.code},
        {
            "topic": topic or "(empty)",
            "payload": text,
            "payload_encoding": encoding,
            "reason": reason,
        },
        rej.received_at_ns + nth,
    )


@dataclass(frozen=True, slots=True)
class RefusedLine:
    index: int
    message: str


def write_keeping_good_lines(influx: InfluxClient, lines: Sequence[str]) -> list[RefusedLine]:
    """Write a batch; if InfluxDB refuses part of it, find the bad lines by halving.

    InfluxDB 1.x stores the valid lines of a "partial write" but names only some of the bad
    ones, so halves are written again until each refused line stands alone; rewriting a
    stored line is harmless because writes are idempotent. Raises InfluxUnavailable (retry
    the whole batch later) and InfluxError for problems no split can fix.
    """
    if not lines:
        return []
    refused: list[RefusedLine] = []
    pending: list[tuple[int, int]] = [(0, len(lines))]
    while pending:
        start, stop = pending.pop()
        try:
            influx.write(lines[start:stop])
        except WriteRefused as exc:
            if stop - start == 1:
                refused.append(RefusedLine(start, exc.message))
            else:
                middle = (start + stop) // 2
                pending.append((middle, stop))
                pending.append((start, middle))
    refused.sort(key=lambda r: r.index)
    return refused
