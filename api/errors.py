"""The API's own exceptions, mapped to HTTP answers in one place (api.app).

FloodwatchError (floodwatch.errors)
└── ApiError
    ├── KeyFileError         the API keys file is unreadable or malformed (exit 2 at start)
    ├── BadParameter         a query or path parameter is invalid              -> 422
    ├── AlertNotFound        no alert with that id                             -> 404
    ├── AlertConflict        the alert cannot be acknowledged in its state     -> 409
    └── BrokerUnavailable    the API is not connected to the MQTT broker        -> 503

InfluxDB's own errors keep their types: InfluxUnavailable -> 503, other InfluxError -> 502.
"""

from __future__ import annotations

from floodwatch.errors import FloodwatchError


class ApiError(FloodwatchError):
    """Base of every error the API raises on purpose."""


class KeyFileError(ApiError):
    """The API keys file cannot be read or has a malformed line; the message names it."""


class BadParameter(ApiError):
    """A request parameter is invalid; the message names it and says what would be valid."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter
        self.message = message


class AlertNotFound(ApiError):
    """No alert with this id is held in memory or recorded in InfluxDB."""


class AlertConflict(ApiError):
    """The alert exists but its state does not allow the requested change."""


class BrokerUnavailable(ApiError):
    """The API's MQTT connection is down, so a change cannot be published now; retry later."""
