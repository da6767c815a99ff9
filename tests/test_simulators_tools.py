"""The simulator tools say the right thing (issue 12 section 7), on the real broker, ingest
and influxd: `replay` lists every row ingest would refuse and sends nothing, reads Excel's
CSV flavours, says when a file is empty; `load` counts publishes the broker refused; a
refused login is reported at once, naming it; --help lists only options the command uses."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from floodwatch.influx import InfluxClient
from floodwatch.localservices import Service
from floodwatch.registry import SHIPPED_REGISTRY, load_registry
from floodwatch.settings import parse_influx_url
from simulators.__main__ import build_parser
from simulators.replay import RecordingError, parse_recording
from tests.conftest import ROOT, own_login, process_env, wait_until

# conftest's spawn leaves its log files for the garbage collector to close.
pytestmark = pytest.mark.filterwarnings("ignore:unclosed file .*[.]log:ResourceWarning")


def _simulators(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulators", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def env(broker: Service, influxd: Service, unique: str) -> dict[str, str]:
    environment = process_env(broker, influxd, unique, unique)
    own_login(broker, environment)
    return environment


@pytest.fixture
def db(influxd: Service, unique: str) -> Iterator[InfluxClient]:
    client = InfluxClient(parse_influx_url(influxd.url("admin")), unique)
    yield client
    client.close()


@pytest.fixture
def ingest(spawn: object, env: dict[str, str], tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    assert callable(spawn)
    proc: subprocess.Popen[bytes] = spawn("ingest", "--stats-interval", "1", env=env)
    log = tmp_path / "ingest-0.log"
    wait_until(lambda: b"ingesting" in log.read_bytes(), 30, "ingest to subscribe")
    yield proc


def _stored(db: InfluxClient, measurement: str = "water_level") -> list[list[object]]:
    series = db.query(f'SELECT * FROM "{measurement}"', epoch="ms")
    return [list(row) for s in series for row in s["values"]] if series else []


def _levels(db: InfluxClient) -> dict[tuple[str, int], float]:
    series = db.query('SELECT "level_cm" FROM "water_level" GROUP BY "sensor"', epoch="ms")
    return {
        (s["tags"]["sensor"], int(ms)): float(level) for s in series for ms, level in s["values"]
    }


def _ms(minutes_ago: int) -> int:
    return int(time.time() * 1000) - minutes_ago * 60_000


@pytest.mark.services
def test_replay_lists_every_row_ingest_would_refuse_and_sends_nothing(
    env: dict[str, str], ingest: object, db: InfluxClient, tmp_path: Path
) -> None:
    """Four bad rows among good ones: every one is listed with its line and ingest's reason,
    the exit status is 2, and nothing reaches ingest; without them the file replays."""
    t = _ms(30)
    rows = [
        "sensor,ts,level_cm,battery_v,rssi",
        f"qh-02,{t},11.5,3.7,-80",
        f"qh-02,{t + 60_000},400,3.7,-80",  # line 3: deeper than any street floods
        f"nowhere,{t},5,3.7,-80",  # line 4: not in the registry
        f"qh-03,{t},5,20,-80",  # line 5: battery over 15 V
        "",  # a blank line is skipped, and line numbers stay the file's
        f"qh-03,{t + 60_000},5,3.7,12",  # line 7: rssi above 0 dBm
        f"qh-04,{t},7.25,3.7,-80",
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(rows) + "\n")
    result = _simulators("replay", str(bad), env=env)
    assert result.returncode == 2, result.stderr
    said = result.stderr
    assert "4 rows would be refused by ingest, so nothing was sent" in said
    assert f"{bad} line 3: depth 400 cm is outside the physical range" in said
    assert f"{bad} line 4: sensor 'nowhere' is not in the registry" in said
    assert f"{bad} line 5: battery_v 20 is outside" in said
    assert f"{bad} line 7: rssi 12 is outside" in said
    assert "replayed" not in said

    good = tmp_path / "good.csv"
    good.write_text("\n".join(r for k, r in enumerate(rows) if k in (0, 1, 7)) + "\n")
    result = _simulators("replay", str(good), env=env)
    assert result.returncode == 0, result.stderr
    assert "replayed 2 readings" in result.stderr
    wait_until(lambda: len(_stored(db)) >= 2, 30, "the two good readings stored")
    assert _levels(db) == {("qh-02", t): 11.5, ("qh-04", t): 7.25}
    assert _stored(db, "deadletter") == []


@pytest.mark.services
@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("excel-utf8.csv", "\ufeffsensor,ts,level_cm\r\nqh-02,{t},12.5\r\nphu-an,{t},-31.25\r\n"),
        (
            "excel-vi.csv",
            "sensor;ts;level_cm;battery_v\r\nqh-02;{t};12,5;3,71\r\nphu-an;{t};-31,25;\r\n",
        ),
    ],
)
def test_replay_reads_excel_csv_flavours(
    name: str, text: str, env: dict[str, str], ingest: object, db: InfluxClient, tmp_path: Path
) -> None:
    """Excel's "CSV UTF-8" starts with a byte-order mark; Vietnamese Excel separates by
    semicolons with decimal commas. Both replay into the values written."""
    t = _ms(20)
    path = tmp_path / name
    path.write_bytes(text.format(t=t).encode("utf-8"))
    result = _simulators("replay", str(path), env=env)
    assert result.returncode == 0, result.stderr
    wait_until(lambda: len(_stored(db)) >= 2, 30, "both readings stored")
    assert _levels(db) == {("qh-02", t): 12.5, ("phu-an", t): -31.25}


@pytest.mark.parametrize("text", ["", "\n\n", "\ufeff", "\ufeff\r\n  \r\n"])
def test_an_empty_recording_says_it_is_empty(text: str) -> None:
    with pytest.raises(RecordingError, match=r"rec\.csv is empty; a recording needs a header row"):
        parse_recording(text, load_registry(SHIPPED_REGISTRY), "rec.csv")


def test_replay_of_an_empty_file_says_it_is_empty(tmp_path: Path) -> None:
    """Excel's empty "CSV UTF-8" file holds only a byte-order mark."""
    path = tmp_path / "empty.csv"
    path.write_bytes("\ufeff".encode())
    result = _simulators("replay", str(path), env=dict(os.environ))
    assert result.returncode == 2
    assert f"{path} is empty" in result.stderr and "column" not in result.stderr


@pytest.mark.services
def test_load_counts_publishes_the_broker_refused(
    broker: Service, env: dict[str, str], unique: str
) -> None:
    """The API's login may not publish readings: every load publish is answered 0x87 Not
    authorized, and `load` reports them refused (exit 1), none acknowledged. (A sensor's login
    is refused earlier, at CONNECT, under any client id but its own.)"""
    # An api-role login free to choose client ids: the shared `api` login is bound to one.
    login = broker.take_login("api", bound=False)
    sensor_env = {**env, "FLOODWATCH_MQTT_URL": broker.url(login.username or "")}
    result = _simulators(
        "load", "--sensors", "5", "--rate", "500", "--duration", "1", "--processes", "1",
        "--mode", "single", "--json", env=sensor_env,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("{"))
    report = json.loads(line)
    assert report["readings"] == 0 and report["messages"] == 0
    assert 400 <= report["refused_messages"] <= 600
    assert report["refusal"] == "Not authorized (0x87)"
    assert "refused" in result.stderr and "Not authorized (0x87)" in result.stderr


@pytest.mark.services
@pytest.mark.parametrize("command", ["replay", "live", "load"])
def test_a_refused_login_is_reported_at_once_naming_it(
    command: str, broker: Service, env: dict[str, str], tmp_path: Path
) -> None:
    """A wrong password: one message naming the refused login and the broker's reason, and
    how to point a simulator at a running stack, well before the 10 s connect timeout (the
    broker answers at once; before, the tools retried until the timeout and blamed a
    "Protocol error")."""
    csv = tmp_path / "one.csv"
    csv.write_text(f"sensor,ts,level_cm\nqh-02,{_ms(5)},3\n")
    args = {
        "replay": ["replay", str(csv)],
        "run": ["run", "demo", "--speed", "0", "--sensors", "qh-02"],
        "live": ["live", "--count", "1", "--sensors", "qh-02"],
        "load": ["load", "--duration", "1", "--processes", "1"],
    }[command]
    wrong = {**env, "FLOODWATCH_MQTT_URL": f"mqtt://admin:wrong@127.0.0.1:{broker.port}"}
    wrong.pop("FLOODWATCH_SENSOR_CREDENTIALS")
    result = _simulators(*args, env=wrong, timeout=9)
    assert result.returncode == 1
    assert "did not accept the login 'admin': Not authorized (0x87)" in result.stderr
    assert "--mqtt-url" in result.stderr and "--sensor-credentials" in result.stderr
    assert "Protocol error" not in result.stderr


@pytest.mark.services
def test_a_sensors_refused_login_names_the_sensor(
    broker: Service, env: dict[str, str], tmp_path: Path
) -> None:
    logins = tmp_path / "sensors.json"
    logins.write_text(json.dumps({"qh-02": "not-its-password"}))
    csv = tmp_path / "one.csv"
    csv.write_text(f"sensor,ts,level_cm\nqh-02,{_ms(5)},3\n")
    result = _simulators(
        "replay", str(csv), env={**env, "FLOODWATCH_SENSOR_CREDENTIALS": str(logins)}, timeout=9
    )
    assert result.returncode == 1
    assert "did not accept the login 'qh-02'" in result.stderr


@pytest.mark.parametrize("command", ["run", "replay", "load", "live"])
def test_publishing_commands_do_not_offer_influxdb_options(command: str) -> None:
    """The simulators publish to the broker only: their --help names no InfluxDB option,
    and the parser refuses one."""
    parser = build_parser()
    commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    sub = commands[0].choices[command]
    text = sub.format_help()
    assert "--mqtt-url" in text and "influx" not in text.lower()
    needed = {"run": ["demo"], "replay": ["x.csv"]}.get(command, [])
    with pytest.raises(SystemExit):
        parser.parse_args([command, *needed, "--influx-db", "x"])
    assert "influx" not in (build_parser().epilog or "").lower()


@pytest.mark.services
def test_replay_reports_publishes_the_broker_refused(
    broker: Service, env: dict[str, str], tmp_path: Path
) -> None:
    """Ingest's login may not publish readings: replay says the broker refused them, exit 1."""
    csv = tmp_path / "two.csv"
    csv.write_text(f"sensor,ts,level_cm\nqh-02,{_ms(5)},3\nqh-03,{_ms(5)},4\n")
    as_ingest = {k: v for k, v in env.items() if k != "FLOODWATCH_SENSOR_CREDENTIALS"}
    # An ingest-role login free to choose client ids: every other ingest login is bound to one.
    login = broker.take_login("ingest", bound=False).username or ""
    as_ingest["FLOODWATCH_MQTT_URL"] = broker.url(login)
    result = _simulators("replay", str(csv), env=as_ingest)
    assert result.returncode == 1, result.stderr
    assert "the broker REFUSED 2 of those messages (Not authorized (0x87))" in result.stderr
