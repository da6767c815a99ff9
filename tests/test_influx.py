"""InfluxDB v1 API against a real influxd: round trips, partial writes, query errors."""

from __future__ import annotations

from typing import Literal

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from floodwatch.errors import InfluxError, InfluxUnavailable, LineProtocolError
from floodwatch.influx import InfluxClient, QueryError, WriteRefused
from floodwatch.localservices import free_port
from floodwatch.settings import parse_influx_url
from ingest.line_protocol import encode_point
from ingest.store import write_keeping_good_lines

T0 = 1_795_691_100_000_000_000
# Unicode category names are Literals in hypothesis's signature; a bare ("Cs",) is tuple[str].
SURROGATES: tuple[Literal["Cs"]] = ("Cs",)
text_no_breaks = st.text(
    alphabet=st.characters(blacklist_characters="\n\r\x00", blacklist_categories=SURROGATES),
    min_size=1,
    max_size=40,
)
int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
finite = st.floats(allow_nan=False, allow_infinity=False)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)
@given(
    tag=text_no_breaks,
    f=finite,
    i=int64,
    b=st.booleans(),
    s=st.text(
        alphabet=st.characters(blacklist_characters="\n\r\x00", blacklist_categories=SURROGATES),
        max_size=200,
    ),
    n=st.integers(min_value=0, max_value=10**6),
)
def test_what_is_written_reads_back_identical(
    influx: InfluxClient, tag: str, f: float, i: int, b: bool, s: str, n: int
) -> None:
    """Any encodable tag and field values come back from influxd exactly as written."""
    t = T0 + n
    try:
        line = encode_point("roundtrip", {"k": tag}, {"f": f, "i": i, "b": b, "s": s}, t)
    except LineProtocolError:
        assume(False)
    influx.write([line])
    series = influx.query(
        'SELECT "f", "i", "b", "s", "k" FROM "roundtrip" WHERE "k" = $k AND time = $t',
        {"k": tag, "t": t},
        epoch="ns",
    )
    assert len(series) == 1
    columns, [row] = series[0]["columns"], series[0]["values"]
    got = dict(zip(columns, row, strict=True))
    # InfluxDB writes integral floats without a decimal point, so JSON reads them as ints:
    # a reader that knows the field is a float converts back, exactly.
    got["f"] = float(got["f"])
    assert got == {"time": t, "f": f, "i": i, "b": b, "s": s, "k": tag}


def test_partial_write_keeps_good_lines_and_names_bad_ones(influx: InfluxClient) -> None:
    """A batch with type-conflicting lines stores the rest and reports exactly the bad lines."""
    influx.write([f"levels,sensor=a v=1.5 {T0}"])
    lines = [f"levels,sensor=a v={k}.5 {T0 + k}" for k in range(1, 11)]
    lines[3] = f'levels,sensor=a v="three" {T0 + 4}'
    lines[7] = f"levels,sensor=a v=true {T0 + 8}"
    refused = write_keeping_good_lines(influx, lines)
    assert [r.index for r in refused] == [3, 7]
    assert all("conflict" in r.message for r in refused)
    [series] = influx.query('SELECT count("v") FROM "levels"')
    assert series["values"][0][1] == 9


def test_write_refused_is_partial_when_influx_says_so(influx: InfluxClient) -> None:
    """InfluxDB's 400 "partial write" is reported as partial, a wholly bad body is not."""
    with pytest.raises(WriteRefused) as info:
        influx.write([f"ok v=1 {T0}", "garbage"])
    assert info.value.partial
    [series] = influx.query('SELECT count("v") FROM "ok"')
    assert series["values"][0][1] == 1


def test_replayed_point_overwrites_itself(influx: InfluxClient) -> None:
    """Writing the same series and time twice leaves one point with the last values."""
    influx.write([f"water_level,sensor=qh-01 level_cm=20.0 {T0}"])
    influx.write([f"water_level,sensor=qh-01 level_cm=20.0 {T0}"])
    [series] = influx.query('SELECT count("level_cm") FROM "water_level"')
    assert series["values"][0][1] == 1


@pytest.mark.parametrize(
    "q",
    ["SELECT * FROM", "SELECT * FROM m WHERE time > 'not a time'", "SELECT nope( FROM m"],
)
def test_query_errors_raise_even_inside_http_200(influx: InfluxClient, q: str) -> None:
    """Errors InfluxDB reports in the body of an HTTP 200 answer still raise QueryError."""
    influx.write([f"m v=1 {T0}"])
    with pytest.raises(QueryError):
        influx.query(q)


def test_bound_parameters_cannot_inject(influx: InfluxClient) -> None:
    """A tag value full of InfluxQL is compared as a string, never run as a query."""
    influx.write([f"water_level,sensor=qh-01 level_cm=1.0 {T0}"])
    evil = 'qh-01\' OR 1=1; DROP DATABASE "x" --'
    assert influx.query("SELECT * FROM water_level WHERE sensor = $s", {"s": evil}) == []
    assert len(influx.query("SELECT * FROM water_level WHERE sensor = $s", {"s": "qh-01"})) == 1


def test_unreachable_influx_is_unavailable_not_fatal() -> None:
    """A closed port raises InfluxUnavailable, the error ingest retries on."""
    client = InfluxClient(parse_influx_url(f"http://127.0.0.1:{free_port()}"), "db", timeout_s=1)
    with pytest.raises(InfluxUnavailable):
        client.write(["m v=1 1"])
    assert not client.ping()
    client.close()


def test_missing_database_is_a_clear_error(influx: InfluxClient, unique: str) -> None:
    """Writing to a database that does not exist names it."""
    other = InfluxClient(influx.endpoint, unique + "_missing")
    with pytest.raises(InfluxError, match="_missing"):
        other.write([f"m v=1 {T0}"])
    other.close()
