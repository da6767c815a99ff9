"""Floodwatch's exceptions, one small flat tree, so callers can catch exactly what they can handle.

FloodwatchError
├── SettingsError        a setting (flag or FLOODWATCH_* variable) is wrong; fix it and restart
├── RegistryError        the sensor registry file is wrong; the message names the feature
├── LineProtocolError    a value cannot be written as InfluxDB line protocol
├── InfluxError          InfluxDB refused or could not be reached
│   ├── InfluxUnavailable    transient: down, timing out or 5xx; retry later
│   └── InfluxAccessDenied   wrong credentials (401) or a user without the right (403)
└── BrokerError          the MQTT broker refused or could not be reached
    └── PublishDenied        the broker refused one publish (MQTT v5 reason code, 0x87: ACL)
"""


class FloodwatchError(Exception):
    """Base of every error Floodwatch raises on purpose."""


class SettingsError(FloodwatchError):
    """A setting is invalid; the message says which and how to fix it."""


class RegistryError(FloodwatchError):
    """The sensor registry is invalid; the message names the feature and the fix."""


class LineProtocolError(FloodwatchError):
    """A measurement, tag or field cannot be encoded as InfluxDB line protocol."""


class InfluxError(FloodwatchError):
    """InfluxDB answered with an error that retrying will not fix."""


class InfluxUnavailable(InfluxError):
    """InfluxDB is down, slow or overloaded; the same request may succeed later."""


class InfluxAccessDenied(InfluxError):
    """InfluxDB refused the credentials (401) or the user lacks the privilege (403)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class BrokerError(FloodwatchError):
    """The MQTT broker refused the connection or could not be reached."""


class LoginRefused(BrokerError):
    """The broker refused the login itself (bad user name or password, not authorized, client
    id not allowed): retrying cannot help, so it is reported at once."""

    def __init__(self, message: str, reason_code: int) -> None:
        super().__init__(message)
        self.reason_code = reason_code


class PublishDenied(BrokerError):
    """The broker answered a QoS 1 publish with a failure reason code (0x87: not authorized)."""

    def __init__(self, message: str, reason_code: int) -> None:
        super().__init__(message)
        self.reason_code = reason_code
