"""Tests for the sensor registry loader: the shipped file, every rejection, and the defaults."""

from __future__ import annotations

import contextlib
import copy
import json
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from floodwatch.errors import RegistryError
from floodwatch.registry import (
    SHIPPED_REGISTRY,
    STREET_THRESHOLDS_CM,
    TIDE_THRESHOLDS_CM,
    Registry,
    load_registry,
    search_key,
)

Doc = dict[str, Any]

# features[0] is a street, features[1] a street sensor, features[2] a tide gauge.
VALID: Doc = {
    "type": "FeatureCollection",
    "features": [
        {
            "type": "Feature",
            "geometry": {
                "type": "LineString",
                "coordinates": [[106.7308, 10.8000], [106.7312, 10.8090]],
            },
            "properties": {"name": "Nguyen Van Huong", "ward": "An Khanh"},
        },
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [106.7310, 10.8010]},
            "properties": {
                "id": "nvh-01",
                "name": "Nguyen Van Huong south",
                "street": "Nguyen Van Huong",
                "ward": "An Khanh",
                "kind": "street",
            },
        },
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [106.7160, 10.7880]},
            "properties": {
                "id": "phu-an",
                "name": "Phu An tide gauge",
                "street": "Saigon River",
                "ward": "An Khanh",
                "kind": "tide",
            },
        },
    ],
}


def _write(directory: Path, doc: object) -> Path:
    path = directory / "sensors.geojson"
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def _props(doc: Doc, index: int = 1) -> dict[str, Any]:
    props: dict[str, Any] = doc["features"][index]["properties"]
    return props


def _set(key: str, value: object, index: int = 1) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        _props(doc, index)[key] = value

    return mutate


def _drop(key: str, index: int = 1) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        del _props(doc, index)[key]

    return mutate


def _coords(value: object, index: int = 1) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        doc["features"][index]["geometry"]["coordinates"] = value

    return mutate


def _duplicate_sensor(doc: Doc) -> None:
    doc["features"].append(copy.deepcopy(doc["features"][1]))


def _only_streets(doc: Doc) -> None:
    doc["features"] = doc["features"][:1]


def _polygon(doc: Doc) -> None:
    doc["features"][1]["geometry"] = {"type": "Polygon", "coordinates": []}


def _no_properties(doc: Doc) -> None:
    doc["features"][1]["properties"] = None


def _distance_without_mount(doc: Doc) -> None:
    _props(doc)["sends"] = "distance_mm"
    _props(doc).pop("mount_height_mm", None)


def _tide_sends_distance(doc: Doc) -> None:
    _props(doc, 2).update(sends="distance_mm", mount_height_mm=2000)


@pytest.mark.parametrize(
    ("mutate", "hint"),
    [
        (lambda doc: doc.update(type="Feature"), '"type": "FeatureCollection"'),
        (lambda doc: doc.pop("features"), 'no "features" list'),
        (lambda doc: doc["features"].append("sensor"), "features[3] is not a GeoJSON object"),
        (lambda doc: doc["features"].append({"type": "Point"}), "features[3] is not a GeoJSON"),
        (_no_properties, 'no "properties" object'),
        (_polygon, 'geometry type "Polygon" is not supported'),
        (_set("id", "NVH-01"), 'sensor id "NVH-01" is invalid'),
        (_set("id", "nvh-01\n"), 'sensor id "nvh-01\\n" is invalid'),
        (_set("id", "-nvh"), "starting with a letter or digit"),
        (_set("id", "a" * 65), "is invalid"),
        (_set("id", 7), "sensor id 7 is invalid"),
        (_drop("id"), "sensor id null is invalid"),
        (_duplicate_sensor, "features[3] (id 'nvh-01'): the id is already used by features[1]"),
        (_drop("name"), "name is missing or empty"),
        (_set("name", "  "), "name is missing or empty"),
        (_set("street", ""), "street is missing or empty"),
        (_set("ward", 3), "ward is missing or empty"),
        (_set("kind", "river"), 'kind "river" is invalid'),
        (_drop("kind"), "kind null is invalid"),
        (_coords([106.73]), "are not two finite numbers"),
        (_coords([106.73, 10.8, 0.0]), "are not two finite numbers"),
        (_coords([106.73, "10.8"]), "are not two finite numbers"),
        (_coords([True, 10.8]), "are not two finite numbers"),
        (_coords([106.73, 1.5e308]), "fall outside Ho Chi Minh City"),
        (_coords(None), "are not two finite numbers"),
        (_coords([10.801, 106.731]), "looks like [latitude, longitude]"),
        (_coords([10.801, 106.731]), "GeoJSON wants [longitude, latitude]"),
        (_coords([105.8, 21.0]), "fall outside Ho Chi Minh City"),
        (_set("mount_height_mm", 0), "mount_height_mm 0 is invalid"),
        (_set("mount_height_mm", -5), "greater than 0 and at most 10000 mm"),
        (_set("mount_height_mm", 10001), "mount_height_mm 10001 is invalid"),
        (_set("mount_height_mm", True), "mount_height_mm true is invalid"),
        (_set("mount_height_mm", "1500"), 'mount_height_mm "1500" is invalid'),
        (_set("sends", "depth"), 'sends "depth" is invalid'),
        (_distance_without_mount, 'sends "distance_mm" but has no mount_height_mm'),
        (_tide_sends_distance, 'a tide gauge must send "level_cm"'),
        (_set("thresholds_cm", []), "is not a non-empty list of finite numbers"),
        (_set("thresholds_cm", 10), "is not a non-empty list of finite numbers"),
        (_set("thresholds_cm", [10, "20"]), "is not a non-empty list of finite numbers"),
        (_set("thresholds_cm", [10, False]), "is not a non-empty list of finite numbers"),
        (_set("thresholds_cm", [20, 10, 30]), "is not strictly increasing"),
        (_set("thresholds_cm", [10, 10, 30]), "is not strictly increasing"),
        (_set("interval_s", 0), "interval_s 0 is invalid"),
        (_set("interval_s", 86401), "at most 86400 s"),
        (_set("interval_s", False), "interval_s false is invalid"),
        (_only_streets, "the registry has no sensors"),
        (_coords([[106.7308, 10.8000]], index=0), "needs at least 2 [longitude, latitude] points"),
        (_coords("line", index=0), "needs at least 2"),
        (
            _coords([[106.7308, 10.8000], [10.809, 106.731]], index=0),
            "features[0] (street 'Nguyen Van Huong') point 1: coordinates [10.809, 106.731]: "
            "the pair looks like [latitude, longitude]",
        ),
        (_coords([[106.7308, 10.8], [106.0, 10.8]], index=0), "fall outside Ho Chi Minh City"),
        (_drop("name", index=0), "name is missing or empty"),
        (_drop("ward", index=0), "(street 'Nguyen Van Huong'): ward is missing or empty"),
    ],
)
def test_rejects_invalid_registry(
    tmp_path: Path, mutate: Callable[[Doc], object], hint: str
) -> None:
    """Each kind of mistake raises RegistryError whose message names the problem."""
    doc = copy.deepcopy(VALID)
    mutate(doc)
    path = _write(tmp_path, doc)
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    message = str(info.value)
    assert hint in message
    assert message.startswith(str(path))
    assert "\n" not in message


@pytest.mark.parametrize(
    ("content", "hint"),
    [
        (b"{not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b'{"type": "FeatureCollection", "features": [NaN]}', "not valid JSON"),
        (b'{"type": "FeatureCollection", "features": [], "x": 1e400}', "not valid JSON"),
        (b"[]", '"type": "FeatureCollection"'),
        (b'"FeatureCollection"', '"type": "FeatureCollection"'),
    ],
)
def test_rejects_unreadable_file(tmp_path: Path, content: bytes, hint: str) -> None:
    """A file that is not a JSON FeatureCollection raises RegistryError saying so."""
    path = tmp_path / "sensors.geojson"
    path.write_bytes(content)
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    assert hint in str(info.value)


def test_rejects_missing_file(tmp_path: Path) -> None:
    """A path with no file behind it raises RegistryError naming the path."""
    path = tmp_path / "absent.geojson"
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    assert str(path) in str(info.value)
    assert "cannot read the registry file" in str(info.value)


@pytest.mark.parametrize(
    ("index", "expected"),
    [(1, STREET_THRESHOLDS_CM), (2, TIDE_THRESHOLDS_CM)],
)
def test_defaults_applied(tmp_path: Path, index: int, expected: tuple[float, ...]) -> None:
    """A sensor without optional properties gets its kind's ladder, 60 s and level_cm."""
    registry = load_registry(_write(tmp_path, VALID))
    sensor = list(registry.sensors.values())[index - 1]
    assert sensor.thresholds_cm == expected
    assert sensor.interval_s == 60.0
    assert sensor.sends == "level_cm"
    assert sensor.mount_height_mm is None


@pytest.mark.parametrize(
    ("mutate", "field", "expected"),
    [
        (_set("thresholds_cm", [5, 12.5, 40]), "thresholds_cm", (5.0, 12.5, 40.0)),
        (_set("thresholds_cm", None), "thresholds_cm", STREET_THRESHOLDS_CM),
        (_set("interval_s", 300), "interval_s", 300.0),
        (_set("interval_s", None), "interval_s", 60.0),
        (_set("mount_height_mm", 1800), "mount_height_mm", 1800.0),
        (_set("sends", None), "sends", "level_cm"),
        (_set("name", "  Padded  "), "name", "Padded"),
        (_set("street", "Not a drawn street"), "street", "Not a drawn street"),
        (_set("id", "a" * 64), "id", "a" * 64),
        (_set("id", "0_x-y"), "id", "0_x-y"),
    ],
)
def test_accepts_valid_variation(
    tmp_path: Path, mutate: Callable[[Doc], None], field: str, expected: object
) -> None:
    """Valid optional values, nulls and unmatched street names load as intended."""
    doc = copy.deepcopy(VALID)
    mutate(doc)
    registry = load_registry(_write(tmp_path, doc))
    sensor = next(iter(registry.sensors.values()))
    assert getattr(sensor, field) == expected
    if field == "thresholds_cm":
        assert all(type(t) is float for t in sensor.thresholds_cm)


def test_distance_sensor_loads(tmp_path: Path) -> None:
    """A distance_mm sensor with a mount height loads with both fields set."""
    doc = copy.deepcopy(VALID)
    _props(doc).update(sends="distance_mm", mount_height_mm=2000)
    sensor = load_registry(_write(tmp_path, doc)).sensors["nvh-01"]
    assert (sensor.sends, sensor.mount_height_mm) == ("distance_mm", 2000.0)


def test_valid_registry_shape(tmp_path: Path) -> None:
    """The loader keeps file order, the streets, the position and the source path."""
    path = _write(tmp_path, VALID)
    registry = load_registry(str(path))
    assert list(registry.sensors) == ["nvh-01", "phu-an"]
    assert registry.source == str(path)
    assert registry.streets[0].name == "Nguyen Van Huong"
    assert registry.streets[0].coordinates == ((106.7308, 10.8), (106.7312, 10.809))
    sensor = registry.sensors["nvh-01"]
    assert (sensor.lon, sensor.lat) == (106.7310, 10.8010)


@pytest.fixture(scope="module")
def shipped() -> Registry:
    """The registry file shipped with the project."""
    return load_registry(SHIPPED_REGISTRY)


@pytest.mark.parametrize(
    ("street", "street_en"),
    [
        ("Đường 12", "Duong 12"),
        ("Quốc Hương", "Quoc Huong"),
        ("Nguyễn Văn Hưởng", "Nguyen Van Huong"),
    ],
)
def test_shipped_street_has_sensors(shipped: Registry, street: str, street_en: str) -> None:
    """Each of the three contract streets has at least four street sensors and a LineString,
    named in Vietnamese with diacritics and in ASCII/English."""
    on_street = [s for s in shipped.sensors.values() if s.street == street and s.kind == "street"]
    assert len(on_street) >= 4
    assert all(s.ward == "An Khánh" and s.street_en == street_en for s in on_street)
    assert all(s.name.startswith(street + ", ") for s in on_street)
    assert all(s.name_en.startswith(street_en + " ") and s.name_en.isascii() for s in on_street)
    assert [(s.name, s.name_en) for s in shipped.streets].count((street, street_en)) == 1


def test_shipped_names_are_vietnamese_with_ascii_ids(shipped: Registry) -> None:
    """Ids stay ASCII; every name has an ASCII/English twin; the gauge is Trạm thủy văn Phú An."""
    assert all(sid.isascii() for sid in shipped.sensors)
    assert all(s.name_en.isascii() and s.street_en.isascii() for s in shipped.sensors.values())
    gauge = shipped.sensors["phu-an"]
    assert (gauge.name, gauge.street) == ("Trạm thủy văn Phú An", "Sông Sài Gòn")
    assert (gauge.name_en, gauge.street_en) == ("Phu An tide gauge", "Saigon River")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("Đường 12", "duong 12"),
        ("Quốc Hương", "quoc huong"),
        ("NGUYỄN  Văn Hưởng", "nguyen van huong"),
        ("quoc huong", "quoc huong"),
        # Precomposed and decomposed forms of the same letters fold alike.
        (unicodedata.normalize("NFD", "Hưởng"), "huong"),
    ],
)
def test_search_key_drops_diacritics_case_and_spacing(text: str, key: str) -> None:
    """Search compares names without marks, đ as d, in lower case with single spaces."""
    assert search_key(text) == key


@pytest.mark.parametrize(
    ("query", "ids"),
    [
        ("quoc huong", ["qh-01", "qh-02", "qh-03", "qh-04"]),
        ("Quốc Hương", ["qh-01", "qh-02", "qh-03", "qh-04"]),
        ("duong 12, dau", ["d12-01", "d12-04"]),
        ("phu an", ["phu-an"]),
        ("saigon", ["phu-an"]),
        ("nvh-05", ["nvh-05"]),
        ("hà nội", []),
    ],
)
def test_find_sensors_is_accent_insensitive(shipped: Registry, query: str, ids: list[str]) -> None:
    """Sensors are found by id, Vietnamese or English name or street, with or without accents."""
    assert [s.id for s in shipped.find_sensors(query)] == ids


def test_find_streets_is_accent_insensitive(shipped: Registry) -> None:
    """Streets by Vietnamese or ASCII name; accents ignored, so "Hưởng" also finds Hương."""
    assert [s.name for s in shipped.find_streets("nguyen van huong")] == ["Nguyễn Văn Hưởng"]
    assert [s.name for s in shipped.find_streets("Hưởng")] == ["Quốc Hương", "Nguyễn Văn Hưởng"]
    assert [s.name for s in shipped.find_streets("DUONG")] == ["Đường 12"]


def test_name_en_defaults_to_the_name_without_marks(tmp_path: Path) -> None:
    """A registry without name_en still offers ASCII names; a given name_en must be text."""
    doc = copy.deepcopy(VALID)
    _props(doc, 0)["name"] = "Nguyễn Văn Hưởng"
    _props(doc)["street"] = "Nguyễn Văn Hưởng"
    _props(doc)["name"] = "Nguyễn Văn Hưởng, phía nam"
    registry = load_registry(_write(tmp_path, doc))
    sensor = registry.sensors["nvh-01"]
    assert (sensor.name_en, sensor.street_en) == ("Nguyen Van Huong, phia nam", "Nguyen Van Huong")
    assert registry.streets[0].name_en == "Nguyen Van Huong"
    _props(doc, 0)["name_en"] = "Nguyen Van Huong Street"
    assert load_registry(_write(tmp_path, doc)).sensors["nvh-01"].street_en == (
        "Nguyen Van Huong Street"
    )
    _props(doc)["name_en"] = 12
    with pytest.raises(RegistryError, match="name_en"):
        load_registry(_write(tmp_path, doc))


def test_shipped_registry_overview(shipped: Registry) -> None:
    """The shipped registry has exactly one tide gauge, three streets and a distance sensor."""
    tide = [s for s in shipped.sensors.values() if s.kind == "tide"]
    assert [s.id for s in tide] == ["phu-an"]
    assert tide[0].interval_s == 300.0
    assert len(shipped.streets) == 3
    assert any(s.sends == "distance_mm" for s in shipped.sensors.values())
    assert any(
        s.thresholds_cm not in (STREET_THRESHOLDS_CM, TIDE_THRESHOLDS_CM)
        for s in shipped.sensors.values()
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=30,
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values)
def test_any_json_value_is_loaded_or_rejected(tmp_path: Path, value: object) -> None:
    """Any JSON-ish file either loads or raises RegistryError, never another exception."""
    path = _write(tmp_path, value)
    with contextlib.suppress(RegistryError):
        load_registry(path)


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    key=st.sampled_from(
        [
            "id",
            "name",
            "name_en",
            "street",
            "street_en",
            "ward",
            "kind",
            "sends",
            "mount_height_mm",
            "thresholds_cm",
            "interval_s",
            "coordinates",
        ]
    ),
    index=st.sampled_from([0, 1, 2]),
    value=json_values,
)
def test_any_property_value_is_loaded_or_rejected(
    tmp_path: Path, key: str, index: int, value: object
) -> None:
    """Any value in any property of an otherwise valid registry loads or raises RegistryError."""
    doc = copy.deepcopy(VALID)
    if key == "coordinates":
        doc["features"][index]["geometry"]["coordinates"] = value
    else:
        _props(doc, index)[key] = value
    with contextlib.suppress(RegistryError):
        load_registry(_write(tmp_path, doc))


def test_a_sensor_cannot_take_a_service_login(tmp_path: Path) -> None:
    """A sensor id equal to a service's broker login (admin, ingest, api) is refused."""
    doc = json.loads(SHIPPED_REGISTRY.read_bytes())
    first = next(f for f in doc["features"] if f["geometry"]["type"] == "Point")
    first["properties"]["id"] = "admin"
    path = tmp_path / "r.geojson"
    path.write_text(json.dumps(doc))
    with pytest.raises(RegistryError, match="broker login"):
        load_registry(path)
