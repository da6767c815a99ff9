"""The local stack command and the broker configuration that every environment shares."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from floodwatch.credentials import Credentials
from floodwatch.influx import InfluxClient
from floodwatch.localservices import MOSQUITTO_CONF, dynsec_plugin, free_port, mosquitto_config
from floodwatch.settings import parse_influx_url
from tests.conftest import ROOT, wait_until


@pytest.mark.slow
def test_stack_runs_the_whole_pipeline_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    """`python -m floodwatch.stack` brings up broker, database, ingest, API and simulator."""
    mqtt, influx_port, api = free_port(), free_port(), free_port()
    out = tmp_path / "stack.out"
    with out.open("wb") as sink:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "floodwatch.stack",
                "--data",
                str(tmp_path / "data"),
                "--mqtt-port",
                str(mqtt),
                "--influx-port",
                str(influx_port),
                "--api-port",
                str(api),
                "--speed",
                "600",
            ],
            cwd=ROOT,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: b"Floodwatch is running" in out.read_bytes(), 60, "the stack")
        assert f"http://127.0.0.1:{api}/".encode() in out.read_bytes()
        creds = Credentials.load(tmp_path / "data" / "credentials")
        admin_url = creds.influx_url("admin", "127.0.0.1", influx_port)
        db = InfluxClient(parse_influx_url(admin_url), "floodwatch")

        def readings() -> int:
            try:
                series = db.query('SELECT count("level_cm") FROM "water_level"')
            except Exception:
                return 0
            return int(series[0]["values"][0][1]) if series else 0

        wait_until(lambda: readings() >= 14, 60, "simulated readings from every sensor")
        # Ingest's metrics on a free port of their own, printed with the rest.
        banner = out.read_bytes()
        metrics_url = re.findall(rb"metrics +(http://127\.0\.0\.1:\d+/metrics)", banner)[0]
        metrics = httpx.get(metrics_url.decode(), timeout=5)
        assert b"floodwatch_ingest_readings_stored_total" in metrics.content
        wait_until(lambda: _healthy(f"http://127.0.0.1:{api}/healthz"), 30, "the API")
        db.close()
        # Reads are open in the local stack; the printed operator key may acknowledge.
        sensors = httpx.get(f"http://127.0.0.1:{api}/v1/sensors", timeout=5)
        assert sensors.status_code == 200 and len(sensors.json()["features"]) == 14
        key = (tmp_path / "data" / "operator-key").read_text().strip()
        assert key.encode() in out.read_bytes()
        ack = httpx.post(
            f"http://127.0.0.1:{api}/v1/alerts/none/ack",
            json={"note": ""},
            headers={"Authorization": f"Bearer {key}"},
            timeout=5,
        )
        assert ack.status_code == 404
        # stack.json: where every service is, without reading the banner.
        stack = json.loads((tmp_path / "data" / "stack.json").read_text())
        assert stack["state"] == "running" and stack["version"] == 1
        services = stack["services"]
        assert list(services) == ["mosquitto", "influxd", "ingest", "api", "notify", "simulator"]
        assert services["api"]["url"] == f"http://127.0.0.1:{api}/"
        assert services["api"]["ports"] == {"http": api}
        assert services["mosquitto"]["ports"] == {"mqtt": mqtt}
        assert services["influxd"]["url"] == f"http://127.0.0.1:{influx_port}"
        for entry in services.values():
            os.kill(entry["pid"], 0)  # alive (raises if not)
            log = Path(entry["log"])
            assert entry["name"] in log.name and log.exists()
        for path in stack["credentials"].values():
            assert Path(path).exists(), path
        assert httpx.get(services["api"]["url"] + "healthz", timeout=5).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    assert code == 0, out.read_text()
    assert b"stopped" in out.read_bytes()
    stopped = json.loads((tmp_path / "data" / "stack.json").read_text())
    assert stopped["state"] == "stopped" and stopped["stopped_at"]
    for name in ("mosquitto", "influxd", "ingest", "api", "notify", "simulators"):
        assert (tmp_path / "data" / "logs" / f"{name}.log").stat().st_size > 0


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        time.sleep(0.1)
        return False


def test_tests_run_the_shipped_broker_config_with_only_port_and_paths_changed(
    tmp_path: Path,
) -> None:
    """The config the tests and the stack run is config/mosquitto.conf, but for four lines:
    port, data directory, and where this machine keeps the dynamic-security plugin and its
    file (every login; no password file, no ACL file)."""
    shipped = MOSQUITTO_CONF.read_text().splitlines()
    local = mosquitto_config(12345, tmp_path, tmp_path / "dynamic-security.json").splitlines()
    if os.geteuid() == 0:  # the one line added: stay root rather than drop to `mosquitto`
        assert local.pop() == "user root"
    changed = [(a, b) for a, b in zip(shipped, local, strict=True) if a != b]
    assert changed == [
        ("listener 1883", "listener 12345 127.0.0.1"),
        ("plugin /usr/lib/mosquitto_dynamic_security.so", f"plugin {dynsec_plugin()}"),
        (
            "plugin_opt_config_file /mosquitto/config/dynamic-security.json",
            f"plugin_opt_config_file {tmp_path}/dynamic-security.json",
        ),
        ("persistence_location /mosquitto/data/", f"persistence_location {tmp_path}/"),
    ]
    assert "allow_anonymous false" in shipped
    assert not any(line.startswith(("password_file", "acl_file")) for line in shipped)


def test_shipped_broker_limits_hold_a_benchmark_burst() -> None:
    """The queue and in-flight limits exceed what the ingest benchmark puts in flight."""
    settings = dict(
        line.split(None, 1)
        for line in MOSQUITTO_CONF.read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert int(settings["max_queued_messages"]) >= 1_000_000
    assert int(settings["max_inflight_messages"]) >= 5_000  # ingest's largest batch
    assert settings["persistence"] == "true"
    assert int(settings["autosave_interval"]) <= 60


def test_free_ports_stay_out_of_the_ephemeral_range_and_never_repeat() -> None:
    """A service port is bindable, below the range outgoing connections draw from (so none
    can take it before the service binds it; the stack once lost its API port that way), and
    one process is never handed the same port twice."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    if low >= 11_000:  # room below the range (Linux's default starts at 32768)
        assert all(1024 < p < low for p in ports)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", ports[-1]))
