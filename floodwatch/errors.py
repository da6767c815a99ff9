"""Floodwatch's exceptions, one small flat tree, so callers can catch exactly what they can handle.

FloodwatchError
├── SettingsError        a setting (flag or FLOODWATCH_* variable) is wrong; fix it and restart
├── RegistryError        the sensor registry file is wrong; the message names the feature
├── LineProtocolError    a value cannot be written as InfluxDB line protocol
├── InfluxError          InfluxDB refused or could not be reached
│   └── InfluxUnavailable    transient: down, timing out or 5xx; retry later
└── BrokerError          the MQTT broker refused or could not be reached
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


class BrokerError(FloodwatchError):
    """The MQTT broker refused the connection or could not be reached."""
