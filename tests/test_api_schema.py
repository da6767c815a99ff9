"""Schemathesis against the app's own OpenAPI document, in-process over ASGI, on the real
broker and influxd: no server errors, and every answer matches its documented status, content
type and schema. One test per operation; /v1/stream never ends, so test_api_live.py covers it.

(schemathesis's pytest plugin, `@schema.parametrize()`, does not run on pytest 9 yet, so each
operation's hypothesis strategy is driven directly.)"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.python.asgi import shutdown_lifespans
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.app import create_app
from api.config import ApiOptions
from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service, free_port
from floodwatch.settings import parse_influx_url
from tests.test_api_support import (
    DEPTH_SENSOR,
    api_settings,
    bearer,
    engine_alert,
    write_keys,
    write_readings,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def _operations() -> list[tuple[str, str]]:
    """(METHOD, path) of every documented operation but the endless event stream."""
    port = free_port()
    doc = create_app(api_settings(port, port, "schema")).openapi()
    return [
        (method.upper(), path)
        for path, methods in doc["paths"].items()
        for method in methods
        if path != "/v1/stream"
    ]


OPERATIONS = _operations()


@pytest.fixture(scope="module")
def api(
    broker: Service, influxd: Service, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[schemathesis.schemas.BaseSchema, str, str]]:
    """The app's schema (its lifespan running), readings in InfluxDB, a retained alert."""
    unique = "s" + uuid.uuid4().hex[:10]
    with InfluxClient(parse_influx_url(influxd.url("admin")), unique) as influx:
        influx.create_database()
        now = time.time_ns()
        write_readings(influx, DEPTH_SENSOR, [(now - n * 60 * 10**9, 10.0 + n) for n in range(120)])
    keys = write_keys(tmp_path_factory.mktemp("schema") / "keys")
    app = create_app(api_settings(broker, influxd, unique), ApiOptions(api_keys=keys.path))
    with engine_alert(broker, influxd, unique, tmp_path_factory.mktemp("ingest")) as alert_id:
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        yield schema, keys.operator, alert_id
    # Schemathesis keeps an app's lifespan running until exit; end it with these tests.
    shutdown_lifespans()


def test_every_operation_is_fuzzed() -> None:
    """The fuzzed operations are all of the API's but the event stream."""
    # The two report routes, the street acknowledgement and /v1/me, and the 11 of operators'
    # changes (routes/operations.py).
    assert len(OPERATIONS) == 27
    assert ("POST", "/v1/alerts/{alert_id}/ack") in OPERATIONS
    assert ("POST", "/v1/streets/{street}/acknowledge") in OPERATIONS


@pytest.mark.services
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_openapi_conformance(
    api: tuple[schemathesis.schemas.BaseSchema, str, str], method: str, path: str
) -> None:
    """Generated requests never cause a server error, and answers match the OpenAPI document."""
    schema, key, alert_id = api

    @given(case=schema[path][method].as_strategy(), known=st.booleans())
    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,
        database=None,
    )
    def run(case: schemathesis.Case[Any], known: bool) -> None:
        if known and case.path_parameters:
            # Random ids only ever meet 404s; half the cases use ones that exist.
            case.path_parameters = {
                name: {"sensor_id": DEPTH_SENSOR, "alert_id": alert_id, "street": "Quoc Huong"}.get(
                    name, value
                )
                for name, value in case.path_parameters.items()
            }
        case.call_and_validate(headers=bearer(key), checks=CHECKS)

    run()
