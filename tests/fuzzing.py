"""Generated and mutated sensor messages for the fuzz tests: seeded, so a failure replays."""

from __future__ import annotations

import json
import random

import orjson

from floodwatch.registry import SHIPPED_REGISTRY, load_registry

REGISTRY = load_registry(SHIPPED_REGISTRY)
SENSOR_IDS = list(REGISTRY.sensors)
# Ids ingest must refuse. (An id with a "/" is not listed: no subscription matches it.)
_ODD_IDS = ["ghost", "QH-01", "a" * 70, "qh-01 ", "ü", "-x", "_"]
_VALUES: list[object] = [
    0,
    -1,
    1,
    23.5,
    -10.5,
    300.1,
    1e308,
    -1e308,
    2**63,
    -(2**63),
    2**64,
    0.1,
    "",
    "12",
    "NaN",
    None,
    True,
    False,
    [],
    {},
    [1],
    {"a": 1},
    "2026-11-25T18:05:00+07:00",
    "2026-11-25T18:05:00",
    "2026-13-45T99:99:99Z",
    1795000000000,
    1795000000,
    -5,
]
_KEYS = ["ts", "level_cm", "distance_mm", "battery_v", "rssi", "seq", "extra", ""]


def valid_reading(rng: random.Random, k: int) -> dict[str, object]:
    doc: dict[str, object] = {
        "ts": 1_790_000_000_000 + k * 1000,
        "level_cm": round(rng.uniform(0, 60), 1),
        "battery_v": round(rng.uniform(3.0, 4.2), 2),
        "rssi": rng.randint(-110, -60),
        "seq": k,
    }
    if rng.random() < 0.2:
        day, hour, minute = rng.randint(1, 9), rng.randint(0, 23), rng.randint(0, 59)
        doc["ts"] = f"2026-09-2{day}T{hour:02d}:{minute:02d}:00.000+07:00"
    if rng.random() < 0.05:
        del doc["ts"]
    return doc


def mutate_doc(rng: random.Random, doc: dict[str, object]) -> object:
    choice = rng.random()
    out: dict[str, object] = dict(doc)
    if choice < 0.3:
        out[rng.choice(_KEYS)] = rng.choice(_VALUES)
    elif choice < 0.45:
        out.pop(rng.choice(_KEYS), None)
    elif choice < 0.55:
        return rng.choice(_VALUES)
    elif choice < 0.65:
        out["distance_mm"] = rng.choice([0, 500, 1500, 2500, 30000, -1])
    return out


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        pos = rng.randrange(len(buf) + 1)
        if op < 0.4 and buf:
            buf[min(pos, len(buf) - 1)] = rng.randrange(256)
        elif op < 0.7:
            buf[pos:pos] = bytes([rng.randrange(256)])
        elif buf:
            del buf[min(pos, len(buf) - 1)]
    return bytes(buf)


def dumps(doc: object) -> bytes:
    """JSON bytes; the standard library where orjson refuses (integers beyond 64 bits)."""
    try:
        return orjson.dumps(doc)
    except TypeError:
        return json.dumps(doc).encode()


def message(rng: random.Random, k: int, root: str) -> tuple[str, bytes]:
    """One (topic, payload): mostly valid readings, then every way of being wrong."""
    sensor = rng.choice(SENSOR_IDS) if rng.random() < 0.9 else rng.choice(_ODD_IDS)
    channel = "reading" if rng.random() < 0.92 else "status"
    topic = f"{root}/v1/sensors/{sensor}/{channel}"
    if channel == "status":
        return topic, rng.choice([b"online", b"offline", b"ONLINE", b"maybe", b"", b"\xff"])
    kind = rng.random()
    if kind < 0.35:
        payload = orjson.dumps(valid_reading(rng, k))
    elif kind < 0.45:
        readings = [valid_reading(rng, k * 1000 + i) for i in range(rng.randint(1, 20))]
        items: list[object] = list(readings)
        if rng.random() < 0.5:
            items[rng.randrange(len(items))] = mutate_doc(rng, readings[0])
        payload = dumps(items)
    elif kind < 0.75:
        payload = dumps(mutate_doc(rng, valid_reading(rng, k)))
    else:
        payload = mutate_bytes(rng, orjson.dumps(valid_reading(rng, k)))
    return topic, payload
