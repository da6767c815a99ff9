"""The only module that talks to InfluxDB: its v1 HTTP API (line protocol on /write, InfluxQL
on /query with bound parameters), which InfluxDB 1.x serves natively and 2.x/3.x for
compatibility."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import orjson

from floodwatch.errors import InfluxAccessDenied, InfluxError, InfluxUnavailable
from floodwatch.settings import InfluxEndpoint

JsonScalar = str | int | float | bool | None


class WriteRefused(InfluxError):
    """InfluxDB refused a write (HTTP 400); with `partial`, the valid lines were stored."""

    def __init__(self, message: str, partial: bool) -> None:
        super().__init__(message)
        self.message = message
        self.partial = partial


class DatabaseMissing(InfluxError):
    """The database does not exist (yet): create it and write again."""


class RetentionPolicyMissing(InfluxUnavailable):
    """The database's retention policy is gone (InfluxDB 1.x lets a WRITE user drop it): no
    write can succeed until an admin creates it again or restores a backup."""


class QueryError(InfluxError):
    """InfluxDB could not run a query (it answers these with HTTP 200 and an error inside)."""


def quote_identifier(name: str) -> str:
    """An InfluxQL identifier in double quotes; identifiers cannot be bound parameters."""
    if "\n" in name:
        raise InfluxError(f"identifier {name!r} contains a newline")
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


class InfluxClient:
    def __init__(self, endpoint: InfluxEndpoint, database: str, timeout_s: float = 10.0) -> None:
        self.endpoint = endpoint
        self.database = database
        auth = (
            (endpoint.username, endpoint.password or "") if endpoint.username is not None else None
        )
        self._http = httpx.Client(
            base_url=endpoint.base_url,
            auth=auth,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 3.0)),
            # On loopback or a LAN, compressing a 10,000-point answer costs influxd and this
            # process more time than it saves on the wire.
            headers={"Accept": "application/json", "Accept-Encoding": "identity"},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> InfluxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise InfluxUnavailable(f"InfluxDB at {self.endpoint} timed out: {exc}") from exc
        except httpx.TransportError as exc:
            raise InfluxUnavailable(f"InfluxDB at {self.endpoint} unreachable: {exc}") from exc
        if response.status_code == 500 and "retention policy not found" in response.text:
            raise RetentionPolicyMissing(
                f"InfluxDB database {self.database!r} has lost its retention policy "
                f"({_error_text(response)}); restore the last backup with scripts/restore "
                "(README, Backups), or as the InfluxDB admin run: CREATE RETENTION POLICY "
                f'"autogen" ON "{self.database}" DURATION 0s REPLICATION 1 DEFAULT'
            )
        if response.status_code >= 500 or response.status_code == 429:
            raise InfluxUnavailable(
                f"InfluxDB at {self.endpoint} answered {response.status_code}: "
                f"{_error_text(response)}"
            )
        if response.status_code == 401:
            who = f"user {self.endpoint.username!r}" if self.endpoint.username else "no user"
            raise InfluxAccessDenied(
                f"InfluxDB at {self.endpoint} refused the login ({who}: "
                f"{_error_text(response)}); check the user and password in the InfluxDB URL "
                "(--influx-url, FLOODWATCH_INFLUX_URL)",
                401,
            )
        if response.status_code == 403:
            raise InfluxAccessDenied(
                f"InfluxDB at {self.endpoint} denied user {self.endpoint.username!r} "
                f"({_error_text(response)}); grant it the right or use another user",
                403,
            )
        return response

    def ping(self) -> bool:
        try:
            return self._request("GET", "/ping").status_code == 204
        except InfluxError:
            return False

    def write(self, lines: Sequence[str] | bytes) -> None:
        """Write line protocol (nanosecond timestamps); raise WriteRefused on HTTP 400."""
        body = lines if isinstance(lines, bytes) else "\n".join(lines).encode("utf-8")
        response = self._request(
            "POST", "/write", params={"db": self.database, "precision": "ns"}, content=body
        )
        if response.status_code == 204:
            return
        message = _error_text(response)
        if response.status_code == 400:
            raise WriteRefused(message, partial=message.startswith("partial write"))
        if response.status_code == 404:
            raise DatabaseMissing(
                f"InfluxDB has no database {self.database!r} ({message}); "
                "it is created at start, so check --influx-db and the user's rights"
            )
        if response.status_code == 413:
            raise WriteRefused(f"request too large: {message}", partial=False)
        raise InfluxError(f"InfluxDB write answered {response.status_code}: {message}")

    def query(
        self,
        q: str,
        params: Mapping[str, JsonScalar] | None = None,
        *,
        database: str | None = None,
        epoch: str | None = None,
        method: str = "GET",
    ) -> list[dict[str, Any]]:
        """Run InfluxQL with bound parameters; return the results' series, raise QueryError."""
        query: dict[str, str] = {"q": q, "db": database or self.database}
        if params:
            query["params"] = orjson.dumps(dict(params)).decode()
        if epoch:
            query["epoch"] = epoch
        if method == "GET":
            response = self._request("GET", "/query", params=query)
        else:
            response = self._request("POST", "/query", data=query)
        try:
            doc = orjson.loads(response.content)
        except orjson.JSONDecodeError as exc:
            raise QueryError(f"InfluxDB answered {response.status_code} with no JSON") from exc
        if "error" in doc:
            raise QueryError(f"InfluxDB refused the query: {doc['error']}")
        series: list[dict[str, Any]] = []
        for result in doc.get("results", []):
            if "error" in result:
                raise QueryError(f"InfluxDB could not run the query: {result['error']}")
            series.extend(result.get("series", []))
        return series

    def create_database(self) -> None:
        """CREATE DATABASE is idempotent in InfluxDB 1.x; run it at every start."""
        self.query(f"CREATE DATABASE {quote_identifier(self.database)}", method="POST")


def _error_text(response: httpx.Response) -> str:
    try:
        doc = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(doc, dict) and "error" in doc:
        return str(doc["error"])[:2000]
    return response.text[:500]
