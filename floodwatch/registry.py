"""The sensor registry (CONTRACT section 1): which sensors exist, where, and how they are judged."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson

from floodwatch.errors import RegistryError

SensorKind = Literal["street", "tide"]
# What a sensor publishes (CONTRACT section 2): a depth, or a raw distance to the water surface.
SensorSends = Literal["level_cm", "distance_mm"]

# CONTRACT section 3: HCMC flood point from 10 cm, red light at 20, impassable 30, closure 50.
STREET_THRESHOLDS_CM: tuple[float, ...] = (10.0, 20.0, 30.0, 50.0)
# Phu An gauge alarm levels I, II, III (river stage, cm).
TIDE_THRESHOLDS_CM: tuple[float, ...] = (140.0, 150.0, 160.0)

# Broker logins of Floodwatch's own services (floodwatch.credentials): never a sensor's id.
RESERVED_IDS = frozenset({"admin", "ingest", "api", "notify"})

SHIPPED_REGISTRY = Path(__file__).resolve().parent.parent / "sensors.geojson"


@dataclass(frozen=True, slots=True)
class Sensor:
    id: str
    name: str
    street: str
    ward: str
    kind: SensorKind
    lon: float
    lat: float
    thresholds_cm: tuple[float, ...]
    interval_s: float = 60.0
    # Height of a downward-looking distance sensor above the dry road; None for depth sensors.
    mount_height_mm: float | None = None
    sends: SensorSends = "level_cm"
    # `name` and `street` are Vietnamese with diacritics (what operators read); these are
    # their ASCII/English forms, from the file's `name_en` or else the name without marks.
    name_en: str = ""
    street_en: str = ""
    # The ward's id, the clustered mode's partition key (docs/CLUSTER.md); "" means the slug of
    # `ward` (ward_key), so registries without it keep loading.
    ward_id: str = ""

    def __post_init__(self) -> None:
        # Built in code without the English forms: derive them (the loader passes its own).
        if not self.name_en:
            object.__setattr__(self, "name_en", ascii_name(self.name))
        if not self.street_en:
            object.__setattr__(self, "street_en", ascii_name(self.street))


def ward_key(sensor: Sensor) -> str:
    """The sensor's ward id: `ward_id` if the registry gives one, else `ward` folded to
    lowercase ASCII words joined by '-' ("An Khánh" -> "an-khanh")."""
    return sensor.ward_id or ward_slug(sensor.ward)


def ward_slug(name: str) -> str:
    """`name` as a partition key: lowercase ASCII words joined by '-' ("An Khánh" -> "an-khanh")."""
    return "-".join(re.findall(r"[a-z0-9]+", ascii_name(name).lower())) or "ward"


@dataclass(frozen=True, slots=True)
class Street:
    name: str
    ward: str
    # GeoJSON order: (longitude, latitude) pairs.
    coordinates: tuple[tuple[float, float], ...]
    name_en: str = ""

    def __post_init__(self) -> None:
        if not self.name_en:
            object.__setattr__(self, "name_en", ascii_name(self.name))


@dataclass(frozen=True, slots=True)
class Registry:
    sensors: Mapping[str, Sensor]
    streets: tuple[Street, ...]
    source: str = ""
    # Sensors an operator retired (floodwatch.operations): no longer judged or shown; their
    # readings are dead-lettered as `retired_sensor`.
    retired: Mapping[str, Sensor] = dataclasses.field(default_factory=dict)

    def get(self, sensor_id: str) -> Sensor | None:
        return self.sensors.get(sensor_id)

    def find_sensors(self, query: str) -> list[Sensor]:
        """Sensors whose id, name or street (Vietnamese or English) contains `query`, accents
        and case ignored: "quoc huong" finds Quốc Hương."""
        needle = search_key(query)
        return [
            s
            for s in self.sensors.values()
            if any(
                needle in search_key(t) for t in (s.id, s.name, s.name_en, s.street, s.street_en)
            )
        ]

    def find_streets(self, query: str) -> list[Street]:
        """Streets whose name (Vietnamese or English) contains `query`, accents ignored."""
        needle = search_key(query)
        return [
            s
            for s in self.streets
            if needle in search_key(s.name) or needle in search_key(s.name_en)
        ]


# Vietnamese đ/Đ is a letter of its own, not d with a mark, so NFD leaves it alone.
_D_STROKE = str.maketrans({"đ": "d", "Đ": "D"})


def ascii_name(text: str) -> str:
    """`text` without diacritics, case kept: "Đường 12" -> "Duong 12"."""
    decomposed = unicodedata.normalize("NFD", text.translate(_D_STROKE))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def search_key(text: str) -> str:
    """The form names are compared in for search: no diacritics, lower case, single spaces."""
    return " ".join(ascii_name(text).casefold().split())


# A plausible box around Ho Chi Minh City; anything outside is a typo or a lat/lon swap.
LON_BOUNDS: tuple[float, float] = (106.3, 107.1)
LAT_BOUNDS: tuple[float, float] = (10.3, 11.2)

_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_MAX_MOUNT_HEIGHT_MM = 10_000.0
_MAX_INTERVAL_S = 86_400.0


def load_registry(path: Path | str) -> Registry:
    """Read and validate a registry file; raise RegistryError naming the feature and the fix."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise RegistryError(
            f"{source}: cannot read the registry file ({exc.strerror or exc}); "
            "check the path and its permissions."
        ) from exc
    try:
        doc: object = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RegistryError(
            f"{source}: not valid JSON ({exc}); fix the syntax or re-export it from your GIS tool."
        ) from exc
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection":
        raise RegistryError(
            f'{source}: the top level must be a GeoJSON object with "type": "FeatureCollection"; '
            "save the registry as a FeatureCollection."
        )
    features = doc.get("features")
    if not isinstance(features, list):
        raise RegistryError(
            f'{source}: the FeatureCollection has no "features" list; '
            "add one Feature per sensor and street."
        )

    sensors: dict[str, Sensor] = {}
    own_street_en: set[str] = set()
    first_seen: dict[str, int] = {}
    streets: list[Street] = []
    for index, feature in enumerate(features):
        where = f"{source}: features[{index}]"
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise RegistryError(
                f'{where} is not a GeoJSON object with "type": "Feature"; '
                "make every entry of the list a Feature."
            )
        geometry = feature.get("geometry")
        properties = feature.get("properties")
        if not isinstance(properties, dict):
            raise RegistryError(
                f'{where} has no "properties" object; give it at least its name and ward.'
            )
        geometry_type = geometry.get("type") if isinstance(geometry, dict) else None
        coordinates = geometry.get("coordinates") if isinstance(geometry, dict) else None
        if geometry_type == "Point":
            sensor = _sensor(where, properties, coordinates)
            if sensor.id in sensors:
                raise RegistryError(
                    f"{where} (id {sensor.id!r}): the id is already used by "
                    f"features[{first_seen[sensor.id]}]; give every sensor a unique id."
                )
            sensors[sensor.id] = sensor
            first_seen[sensor.id] = index
            if properties.get("street_en") is not None:
                own_street_en.add(sensor.id)
        elif geometry_type == "LineString":
            streets.append(_street(where, properties, coordinates))
        else:
            raise RegistryError(
                f"{where}: geometry type {_show(geometry_type)} is not supported; "
                "use a Point for a sensor or a LineString for a street."
            )
    if not sensors:
        raise RegistryError(
            f"{source}: the registry has no sensors; add at least one Feature with Point geometry."
        )
    # A sensor's street in English: its own street_en, else its LineString's name_en, else
    # the street's name without marks (what __post_init__ derived).
    street_en = {street.name: street.name_en for street in streets}
    sensors = {
        sid: s
        if sid in own_street_en
        else dataclasses.replace(s, street_en=street_en.get(s.street, s.street_en))
        for sid, s in sensors.items()
    }
    return Registry(sensors=sensors, streets=tuple(streets), source=source)


def _sensor(where: str, props: dict[str, object], coordinates: object) -> Sensor:
    sensor_id = props.get("id")
    if not isinstance(sensor_id, str) or _ID.fullmatch(sensor_id) is None:
        raise RegistryError(
            f"{where}: sensor id {_show(sensor_id)} is invalid; use 1-64 characters of "
            "lowercase letters, digits, '_' or '-', starting with a letter or digit."
        )
    if sensor_id in RESERVED_IDS:
        raise RegistryError(
            f"{where}: sensor id {sensor_id!r} is the broker login of a Floodwatch service "
            "(a sensor logs in with its id, so it would get that service's rights); rename it."
        )
    where = f"{where} (id {sensor_id!r})"
    name = _text(where, props, "name")
    street = _text(where, props, "street")
    ward = _text(where, props, "ward")
    ward_id = props.get("ward_id")
    if ward_id is not None and (not isinstance(ward_id, str) or _ID.fullmatch(ward_id) is None):
        raise RegistryError(
            f"{where}: ward_id {_show(ward_id)} is invalid; use 1-64 characters of lowercase "
            "letters, digits, '_' or '-' (or leave it out to use the ward's name)."
        )

    kind = props.get("kind")
    if kind not in ("street", "tide"):
        raise RegistryError(
            f'{where}: kind {_show(kind)} is invalid; use "street" for depth on a road '
            'or "tide" for a river gauge.'
        )
    lon, lat = _position(where, coordinates)

    sends = props.get("sends")
    if sends is None:
        sends = "level_cm"
    if sends not in ("level_cm", "distance_mm"):
        raise RegistryError(
            f'{where}: sends {_show(sends)} is invalid; use "level_cm" or "distance_mm".'
        )

    mount_height_mm = _optional_number(
        where, props, "mount_height_mm", upper=_MAX_MOUNT_HEIGHT_MM, unit="mm"
    )
    if sends == "distance_mm" and mount_height_mm is None:
        raise RegistryError(
            f'{where}: the sensor sends "distance_mm" but has no mount_height_mm; '
            "add the sensor's height above the dry road surface in mm."
        )
    # Depth = mount height - distance only means something above a road, not for a river stage.
    if sends == "distance_mm" and kind == "tide":
        raise RegistryError(
            f'{where}: a tide gauge must send "level_cm" (river stage); '
            'remove "sends": "distance_mm" or make it a street sensor.'
        )

    interval_s = _optional_number(where, props, "interval_s", upper=_MAX_INTERVAL_S, unit="s")
    default = STREET_THRESHOLDS_CM if kind == "street" else TIDE_THRESHOLDS_CM
    return Sensor(
        id=sensor_id,
        name=name,
        name_en=_english(where, props, name),
        street_en=_english(where, props, street, "street_en"),
        street=street,
        ward=ward,
        kind="street" if kind == "street" else "tide",
        lon=lon,
        lat=lat,
        thresholds_cm=_thresholds(where, props.get("thresholds_cm"), default),
        interval_s=60.0 if interval_s is None else interval_s,
        mount_height_mm=mount_height_mm,
        sends="distance_mm" if sends == "distance_mm" else "level_cm",
        ward_id=ward_id or ward_slug(ward),
    )


def sensor_from_properties(where: str, props: Mapping[str, object], coordinates: object) -> Sensor:
    """One sensor from GeoJSON-style properties and `[lon, lat]`, validated as the file's are
    (registry overrides and added sensors go through here); raises RegistryError."""
    return _sensor(where, dict(props), coordinates)


def sensor_as_properties(sensor: Sensor) -> dict[str, object]:
    """A sensor's registry properties, as the GeoJSON file writes them (the inverse of
    `sensor_from_properties`, coordinates aside)."""
    # ward_id only when given: an operator's override of a sensor keeps its ward's partition.
    ward = {"ward_id": sensor.ward_id} if sensor.ward_id else {}
    return {
        **ward,
        "id": sensor.id,
        "name": sensor.name,
        "name_en": sensor.name_en,
        "street": sensor.street,
        "street_en": sensor.street_en,
        "ward": sensor.ward,
        "kind": sensor.kind,
        "sends": sensor.sends,
        "mount_height_mm": sensor.mount_height_mm,
        "thresholds_cm": list(sensor.thresholds_cm),
        "interval_s": sensor.interval_s,
    }


def _street(where: str, props: dict[str, object], coordinates: object) -> Street:
    name = _text(where, props, "name")
    where = f"{where} (street {name!r})"
    ward = _text(where, props, "ward")
    if not isinstance(coordinates, list) or len(coordinates) < 2:
        raise RegistryError(
            f"{where}: a street LineString needs at least 2 [longitude, latitude] points; "
            "draw the street with two or more vertices."
        )
    points = tuple(_position(f"{where} point {i}", point) for i, point in enumerate(coordinates))
    return Street(name=name, ward=ward, coordinates=points, name_en=_english(where, props, name))


def _english(where: str, props: dict[str, object], name: str, key: str = "name_en") -> str:
    """The optional `name_en` (or `street_en`): the ASCII/English name; the name without
    diacritics if absent."""
    if props.get(key) is None:
        return ascii_name(name)
    return _text(where, props, key)


def _text(where: str, props: dict[str, object], key: str) -> str:
    value = props.get(key)
    if not isinstance(value, str) or not value.strip():
        raise RegistryError(
            f"{where}: {key} is missing or empty (got {_show(value)}); give it a non-empty text."
        )
    return value.strip()


def _position(where: str, value: object) -> tuple[float, float]:
    pair = [_finite(v) for v in value] if isinstance(value, list) and len(value) == 2 else []
    if len(pair) != 2 or pair[0] is None or pair[1] is None:
        raise RegistryError(
            f"{where}: coordinates {_show(value)} are not two finite numbers; "
            "write them as [longitude, latitude]."
        )
    lon, lat = pair[0], pair[1]
    if _inside(lon, LON_BOUNDS) and _inside(lat, LAT_BOUNDS):
        return lon, lat
    if _inside(lon, LAT_BOUNDS) and _inside(lat, LON_BOUNDS):
        raise RegistryError(
            f"{where}: coordinates [{lon}, {lat}]: the pair looks like [latitude, longitude]; "
            "GeoJSON wants [longitude, latitude], so swap them."
        )
    raise RegistryError(
        f"{where}: coordinates [{lon}, {lat}] fall outside Ho Chi Minh City "
        f"(longitude {LON_BOUNDS[0]}..{LON_BOUNDS[1]}, latitude {LAT_BOUNDS[0]}..{LAT_BOUNDS[1]}); "
        "fix the position."
    )


def _optional_number(
    where: str, props: dict[str, object], key: str, *, upper: float, unit: str
) -> float | None:
    # GIS tools write an empty attribute as null, so null means "not given".
    value = props.get(key)
    if value is None:
        return None
    number = _finite(value)
    if number is None or not 0.0 < number <= upper:
        raise RegistryError(
            f"{where}: {key} {_show(value)} is invalid; "
            f"give a number greater than 0 and at most {upper:g} {unit}."
        )
    return number


def _thresholds(where: str, value: object, default: tuple[float, ...]) -> tuple[float, ...]:
    if value is None:
        return default
    numbers = [_finite(v) for v in value] if isinstance(value, list) else []
    ladder = tuple(n for n in numbers if n is not None)
    if not ladder or len(ladder) != len(numbers):
        raise RegistryError(
            f"{where}: thresholds_cm {_show(value)} is not a non-empty list of finite numbers; "
            "list the alert levels in cm, e.g. [10, 20, 30, 50]."
        )
    if any(low >= high for low, high in itertools.pairwise(ladder)):
        raise RegistryError(
            f"{where}: thresholds_cm {_show(value)} is not strictly increasing; "
            "list the alert levels from lowest to highest, each one higher than the last."
        )
    return ladder


def _finite(value: object) -> float | None:
    """The value as a float if it is a finite JSON number; None otherwise (bool included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return number if math.isfinite(number) else None


def _inside(value: float, bounds: tuple[float, float]) -> bool:
    return bounds[0] <= value <= bounds[1]


def _show(value: object) -> str:
    # Show the value as JSON, as the user wrote it, on one line even when it is huge.
    try:
        text = orjson.dumps(value).decode()
    except TypeError:
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
