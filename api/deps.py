"""Request dependencies as Annotated aliases: the app's services and who is asking.

Auth (CONTRACT section 4): `Authorization: Bearer <key>`. No key: 401, unless anonymous reads
are allowed, which makes the caller a viewer. A key that matches nothing: 401. A key whose
role is too low: 403. Both 401s carry `WWW-Authenticate: Bearer`.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import HTTPBearer

from api.alerts import AlertSource
from api.auth import ANONYMOUS, RANK, KeyStore, Principal, Role
from api.config import ApiOptions
from api.eventlog import EventLog
from api.feed import LiveFeed
from api.geo import BodyCache, SensorsBody
from api.live import LiveState
from api.metrics import Metrics
from floodwatch.influx import InfluxClient
from floodwatch.registry import Registry
from floodwatch.settings import MqttEndpoint, Settings

# A readiness probe must answer well inside an orchestrator's probe timeout (compose: 5 s).
PROBE_TIMEOUT_S = 2.0

bearer = HTTPBearer(
    auto_error=False,
    description="An API key (`python -m api keys add`): viewer reads, operator also acknowledges.",
)


@dataclass(frozen=True, slots=True)
class Probes:
    """The blocking reachability checks behind /readyz; run them in a worker thread."""

    mqtt: MqttEndpoint
    influx: InfluxClient

    def broker(self) -> str | None:
        """None if the broker accepts a TCP connection, else a sentence saying why not."""
        try:
            with socket.create_connection((self.mqtt.host, self.mqtt.port), PROBE_TIMEOUT_S):
                return None
        except OSError as exc:
            return f"The MQTT broker at {self.mqtt} does not accept connections ({exc})."

    def database(self) -> str | None:
        """None if InfluxDB answers /ping, else a sentence saying why not."""
        if self.influx.ping():
            return None
        return f"InfluxDB at {self.influx.endpoint} does not answer /ping."


@dataclass(frozen=True, slots=True)
class Services:
    """Everything the routes use, built by create_app's lifespan."""

    settings: Settings
    options: ApiOptions
    state: LiveState
    events: EventLog
    metrics: Metrics
    influx: InfluxClient
    probes: Probes
    feed: LiveFeed
    alerts: AlertSource
    sensors_body: SensorsBody
    streets_body: BodyCache
    clock: Callable[[], int]

    @property
    def registry(self) -> Registry:
        """The registry in force: the file plus operators' overrides (the live state's)."""
        return self.state.registry


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(_services)]


def _alerts(request: Request) -> AlertSource:
    return _services(request).alerts


AlertsDep = Annotated[AlertSource, Depends(_alerts)]


def _challenge(detail: str, invalid: bool) -> HTTPException:
    value = 'Bearer realm="floodwatch"' + (', error="invalid_token"' if invalid else "")
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, {"WWW-Authenticate": value})


def authenticate(request: Request) -> Principal | None:
    """The caller, from the Authorization header; None if it sent none. 401 if it is wrong."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _challenge("Authorization must be `Bearer <API key>`.", invalid=True)
    keys: KeyStore = request.app.state.keys
    key = keys.lookup(token.strip())
    if key is None:
        raise _challenge("This API key is not valid; ask an administrator for one.", True)
    return Principal(key.name, key.role)


def _require(role: Role) -> Callable[..., Principal]:
    def dependency(request: Request, _: Annotated[object, Security(bearer)]) -> Principal:
        principal = authenticate(request)
        if principal is None:
            options: ApiOptions = request.app.state.options
            if not options.anonymous_read or role != "viewer":
                raise _challenge(
                    f"An API key with role {role} is needed: send it as "
                    "`Authorization: Bearer <key>`.",
                    invalid=False,
                )
            principal = ANONYMOUS
        if RANK[principal.role] < RANK[role]:
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"Key {principal.name!r} has role {principal.role}; this needs {role}.",
            )
        return principal

    return dependency


ViewerDep = Annotated[Principal, Depends(_require("viewer"))]
OperatorDep = Annotated[Principal, Depends(_require("operator"))]
