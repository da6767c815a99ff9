"""`python -m floodwatch.stack`: the whole pipeline on this machine, for demos and development.

Starts Mosquitto (with config/mosquitto.conf and the dynamic-security file) and InfluxDB (with
authentication), then ingest, the API and the street simulator, each as its own process with
its log under the data directory and its own least-privileged logins (passwords generated once
into DATA/credentials/). Ctrl-C (or SIGTERM) stops them in reverse order. `scripts/stack`
installs what is missing and runs this.

`--cluster` starts the clustered mode instead (docs/CLUSTER.md, README "Architecture"): three
NATS nodes with JetStream and MQTT, HAProxy in front of their MQTT listeners (`mqtt-front`) and
of the API replicas (`api-front`), InfluxDB, `--workers` ingest workers and `--api-replicas`
API replicas, and the street publishing MQTT 3.1.1 through the front door
(floodwatch.clusterstack, which tests and benchmarks reuse), and two notifiers (`notify-1`,
`notify-2`): one active, one standing by to take over (notify/lease.py).

Once every service is up, DATA/stack.json says where each one is (name, URL, ports, PID, log)
and where the credential files are, so tools and tests find a running stack without reading
its banner; it is written atomically (a reader never sees half a file) and marked
`"state": "stopped"` when the stack exits.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from floodwatch.cluster import DEFAULT_PARTITIONS
from floodwatch.clusterstack import (
    cluster_credential_files,
    stack_services,
    start_cluster_stack,
)
from floodwatch.credentials import Credentials, grant_database
from floodwatch.errors import FloodwatchError
from floodwatch.localservices import (
    Service,
    free_port,
    influxd_service,
    mosquitto_service,
    wait_influx_ready,
)
from floodwatch.registry import SHIPPED_REGISTRY, load_registry
from floodwatch.settings import MQTT_V5, mqtt_protocol

ROOT = Path(__file__).resolve().parent.parent


def _port_or_free(preferred: int) -> int:
    """The usual port if nothing listens there (a system broker may), else a free one."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def _operator_key(data: Path, env: dict[str, str]) -> str:
    """The local stack's operator key: made once with `python -m api keys add`, then reused."""
    keep = data / "operator-key"
    if keep.exists():
        return keep.read_text().strip()
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "api",
            "keys",
            "add",
            "--role",
            "operator",
            "--name",
            "local-operator",
            "--api-keys",
            str(data / "api-keys"),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    key = made.stdout.strip().splitlines()[-1].strip()
    keep.write_text(key + "\n")
    keep.chmod(0o600)
    return key


STACK_FILE = "stack.json"
# Version of stack.json's layout: readers check it before relying on the fields.
STACK_FILE_VERSION = 1


def stack_service(
    name: str,
    pid: int | None,
    log: Path,
    *,
    url: str | None = None,
    ports: Mapping[str, int] | None = None,
) -> dict[str, object]:
    """One service's entry in stack.json (URLs never hold a password)."""
    return {"name": name, "url": url, "ports": dict(ports or {}), "pid": pid, "log": str(log)}


def stack_document(
    mode: str,
    data: Path,
    services: Mapping[str, Mapping[str, object]],
    credentials: Mapping[str, str],
) -> dict[str, object]:
    """stack.json's content, the same layout in both modes (`mode`: single or cluster)."""
    return {
        "version": STACK_FILE_VERSION,
        "mode": mode,
        "state": "running",
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "stopped_at": None,
        "pid": os.getpid(),
        "data_dir": str(data),
        "logs": str(data / "logs"),
        "services": dict(services),
        "credentials": dict(credentials),
    }


def write_stack_file(path: Path, doc: Mapping[str, object]) -> None:
    """Write stack.json atomically: to a temporary file beside it, then renamed over it."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    partial.replace(path)


def mark_stopped(path: Path, at: datetime) -> None:
    """Mark stack.json stopped (the PIDs are no longer ours); nothing if it was never written."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    doc["state"] = "stopped"
    doc["stopped_at"] = at.isoformat(timespec="seconds")
    write_stack_file(path, doc)


def _wait_listening(port: int, stop: threading.Event, timeout_s: float = 60.0) -> bool:
    """True once something accepts connections on the loopback port."""
    deadline = time.monotonic() + timeout_s
    while not stop.is_set() and time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        stop.wait(0.2)
    return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m floodwatch.stack",
        description=__doc__,
        epilog="Where everything runs is written to DATA/stack.json (each service's name,\n"
        "URL, ports, PID and log; the credential files), e.g.\n"
        "  jq -r .services.api.url .stack/stack.json\n"
        "  jq -r '.services[\"api-front\"].url' .stack/stack.json   (--cluster)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=ROOT / ".stack",
        help="directory for the broker's and database's data and all logs "
        "(default: .stack in the project)",
    )
    parser.add_argument(
        "--mqtt-port",
        type=int,
        default=1883,
        help="broker port (default 1883; a free one if taken)",
    )
    parser.add_argument(
        "--influx-port",
        type=int,
        default=8086,
        help="InfluxDB port (default 8086; a free one if taken)",
    )
    parser.add_argument(
        "--api-port", type=int, default=8000, help="API port (default 8000; a free one if taken)"
    )
    parser.add_argument(
        "--speed",
        default="60",
        help="simulator time acceleration (default 60: a shower floods and "
        "drains a street within a minute); ingest and the API get the same "
        "FLOODWATCH_TIME_SCALE, so alert timers (10 min hold: 10 s) keep pace",
    )
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="the clustered mode: 3 NATS nodes (JetStream, MQTT 3.1.1), HAProxy fronts for MQTT "
        "and the API, --workers ingest workers, --api-replicas API replicas, two notifiers "
        "(notify-1 active, notify-2 standing by), InfluxDB and the "
        "street, all on free loopback ports (README, Architecture); --mqtt-port, --influx-port "
        "and --api-port do not apply",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="--cluster: ingest workers, each pulling every partition it is given (default 2)",
    )
    parser.add_argument(
        "--api-replicas",
        type=int,
        default=2,
        help="--cluster: API replicas behind the API front door (default 2)",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=DEFAULT_PARTITIONS,
        help=f"--cluster: partitions of the readings, by ward (default {DEFAULT_PARTITIONS}); "
        "more than workers, so a dead worker's partitions spread over the others",
    )
    parser.add_argument(
        "--mqtt-protocol",
        default=os.environ.get("FLOODWATCH_MQTT_PROTOCOL", MQTT_V5),
        help="MQTT version every service and the simulator speak: 5 or 3.1.1 (Mosquitto speaks "
        "both; NATS only 3.1.1, so --cluster always uses 3.1.1) [env FLOODWATCH_MQTT_PROTOCOL; "
        "default 5]",
    )
    parser.add_argument(
        "--for",
        dest="run_for",
        type=float,
        default=0,
        help="stop after this many seconds (default 0: until Ctrl-C)",
    )
    return parser


def _stop_on_signals() -> threading.Event:
    """An event set by Ctrl-C or SIGTERM: the stack then stops everything in order."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    return stop


def run_cluster(args: argparse.Namespace, data: Path) -> int:
    """`--cluster`: the clustered pipeline (floodwatch.clusterstack) until stopped."""
    for flag, value, least in (
        ("--workers", args.workers, 0),
        ("--api-replicas", args.api_replicas, 1),
        ("--partitions", args.partitions, 1),
    ):
        if value < least:
            print(f"stack: {flag} must be at least {least}, got {value}", file=sys.stderr)
            return 2
    stop = _stop_on_signals()
    stack_file = data / STACK_FILE
    stack_file.unlink(missing_ok=True)  # an earlier run's file would point at dead PIDs
    logs = data / "logs"
    try:
        operator_key = _operator_key(data, dict(os.environ))
        with start_cluster_stack(
            data,
            workers=args.workers,
            api_replicas=args.api_replicas,
            partitions=args.partitions,
            speed=str(args.speed),
            api_keys=data / "api-keys",
        ) as stack:
            write_stack_file(
                stack_file,
                stack_document(
                    "cluster", data, stack_services(stack), cluster_credential_files(stack)
                ),
            )
            replicas = ", ".join(f"{a.name} :{a.port}" for a in stack.apis)
            print(
                f"""Floodwatch (clustered) is running (Ctrl-C stops everything):
  IOC page     {stack.api_url}/   through api-front (HAProxy) to {replicas}
               operator key {operator_key} (kept in {data / "operator-key"})
  MQTT front   127.0.0.1:{stack.mqtt_front.port}   (HAProxy to nats-1..3; MQTT 3.1.1 only)
  NATS         {", ".join(stack.urls[s.name] for s, _ in stack.cluster.nodes)}
  workers      {", ".join(w.name for w in stack.workers) or "none"} over {stack.partitions} \
partitions
  notifiers    {", ".join(n.name for n in stack.notifiers)}   (one active, the other standing by; \
what would be sent: their logs)
  logs         {logs}/   (NATS nodes: {data / "nats"}/)
  NATS admin   {logs / "cluster-admin.log"}   (reloads after registry changes, client-id \
takeovers; by hand: python -m floodwatch.cluster reload)
  stack.json   {stack_file}   (each service's URL, ports and PID)""",
                flush=True,
            )
            deadline = time.monotonic() + args.run_for if args.run_for else None
            while not stop.wait(0.5):
                ended = stack.exited()
                if ended:
                    for svc in ended:
                        code = svc.proc.returncode if svc.proc else None
                        print(
                            f"stack: {svc.name} exited with {code}; see {svc.log}", file=sys.stderr
                        )
                    return 1
                if deadline is not None and time.monotonic() > deadline:
                    break
            print("stopping…", flush=True)
        return 0
    except FloodwatchError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    finally:
        mark_stopped(stack_file, datetime.now(UTC))
        print("stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        protocol = mqtt_protocol(args.mqtt_protocol)
    except FloodwatchError as exc:
        print(f"floodwatch.stack: {exc}", file=sys.stderr)
        return 2
    data: Path = args.data.resolve()
    logs = data / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if args.cluster:
        return run_cluster(args, data)
    (data / "broker").mkdir(exist_ok=True)
    (data / "influxdb").mkdir(exist_ok=True)
    mqtt_port = _port_or_free(args.mqtt_port)
    influx_port = _port_or_free(args.influx_port)
    api_port = _port_or_free(args.api_port)
    # Free like the others: a second stack on this machine must not serve the first one's.
    metrics_port = free_port()
    notify_metrics_port = free_port()

    stop = _stop_on_signals()

    env = dict(
        os.environ,
        FLOODWATCH_OUTBOX=str(data / "ingest-outbox.sqlite"),
        # The street plays args.speed times faster: the alert timers must too (ingest, API).
        FLOODWATCH_TIME_SCALE=str(args.speed),
        FLOODWATCH_MQTT_PROTOCOL=protocol,
        PYTHONUNBUFFERED="1",
    )
    services: list[Service] = []
    apps: list[tuple[str, subprocess.Popen[bytes]]] = []
    stack_file = data / STACK_FILE
    stack_file.unlink(missing_ok=True)  # an earlier run's file would point at dead PIDs
    try:
        creds_dir = data / "credentials"
        creds = Credentials.load_or_generate(creds_dir, load_registry(SHIPPED_REGISTRY).sensors)
        broker = mosquitto_service(data / "broker", mqtt_port, creds)
        influxd = influxd_service(data / "influxdb", influx_port, creds)
        for svc in (broker, influxd):
            svc.log = logs / f"{svc.name}.log"
            svc.start()
            services.append(svc)
        wait_influx_ready(influx_port)
        grant_database(f"http://127.0.0.1:{influx_port}", creds.influx, "floodwatch")
        operator_key = _operator_key(data, env)
        # Each process logs in with only the rights it needs (floodwatch/credentials.py).
        logins = {
            "ingest": dict(
                FLOODWATCH_METRICS_PORT=str(metrics_port),
                FLOODWATCH_MQTT_URL=creds.mqtt_url("ingest", "127.0.0.1", mqtt_port),
                FLOODWATCH_INFLUX_URL=creds.influx_url("writer", "127.0.0.1", influx_port),
                FLOODWATCH_INFLUX_READ_URL=creds.influx_url("reader", "127.0.0.1", influx_port),
            ),
            "api": dict(
                FLOODWATCH_MQTT_URL=creds.mqtt_url("api", "127.0.0.1", mqtt_port),
                FLOODWATCH_INFLUX_URL=creds.influx_url("reader", "127.0.0.1", influx_port),
            ),
            # Alerts go to the notifier's log only (README "The notifier").
            "notify": dict(
                FLOODWATCH_MQTT_URL=creds.mqtt_url("notify", "127.0.0.1", mqtt_port),
                FLOODWATCH_ROUTING=str(ROOT / "config" / "notify-routing.demo.toml"),
                FLOODWATCH_NOTIFY_STATE=str(data / "notify.sqlite"),
                FLOODWATCH_METRICS_PORT=str(notify_metrics_port),
                FLOODWATCH_PAGE_URL=f"http://127.0.0.1:{api_port}/",
            ),
            "simulators": dict(
                FLOODWATCH_MQTT_URL=f"mqtt://127.0.0.1:{mqtt_port}",
                FLOODWATCH_SENSOR_CREDENTIALS=str(Credentials.sensor_file(creds_dir)),
            ),
        }
        admin_mqtt = f"-u admin -P {creds.mqtt['admin']}"
        admin_influx = f"-username admin -password {creds.influx['admin']}"
        for name, extra in (
            ("ingest", []),
            (
                "api",
                [
                    "--port",
                    str(api_port),
                    "--api-keys",
                    str(data / "api-keys"),
                    "--anonymous-read",
                ],
            ),
            ("notify", []),
            (
                "simulators",
                ["run", "demo", "--speed", str(args.speed), "--timestamps", "wall", "--loop"],
            ),
        ):
            with (logs / f"{name}.log").open("ab") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", name, *extra],
                    env={**env, **logins[name]},
                    cwd=ROOT,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            apps.append((name, proc))
        if _wait_listening(api_port, stop):
            pids = {name: proc.pid for name, proc in apps}
            services_doc = {
                "mosquitto": stack_service(
                    "mosquitto",
                    broker.pid,
                    broker.log,
                    url=f"mqtt://127.0.0.1:{mqtt_port}",
                    ports={"mqtt": mqtt_port},
                ),
                "influxd": stack_service(
                    "influxd",
                    influxd.pid,
                    influxd.log,
                    url=f"http://127.0.0.1:{influx_port}",
                    ports={"http": influx_port},
                ),
                "ingest": stack_service(
                    "ingest",
                    pids["ingest"],
                    logs / "ingest.log",
                    url=f"http://127.0.0.1:{metrics_port}/metrics",
                    ports={"metrics": metrics_port},
                ),
                "api": stack_service(
                    "api",
                    pids["api"],
                    logs / "api.log",
                    url=f"http://127.0.0.1:{api_port}/",
                    ports={"http": api_port},
                ),
                "notify": stack_service(
                    "notify",
                    pids["notify"],
                    logs / "notify.log",
                    url=f"http://127.0.0.1:{notify_metrics_port}/metrics",
                    ports={"metrics": notify_metrics_port},
                ),
                "simulator": stack_service(
                    "simulator", pids["simulators"], logs / "simulators.log"
                ),
            }
            credential_files = {
                "directory": str(creds_dir),
                "services": str(creds_dir / "credentials.json"),
                "sensors": str(Credentials.sensor_file(creds_dir)),
                "mosquitto_dynamic_security": str(Credentials.dynsec_file(creds_dir)),
                "api_keys": str(data / "api-keys"),
                "operator_key": str(data / "operator-key"),
            }
            write_stack_file(
                stack_file, stack_document("single", data, services_doc, credential_files)
            )
        print(
            f"""Floodwatch is running (Ctrl-C stops everything):
  IOC page     http://127.0.0.1:{api_port}/   (reads are open; to acknowledge alerts,
               enter the operator key {operator_key}, kept in {data / "operator-key"})
  API          http://127.0.0.1:{api_port}/v1/sensors   (OpenAPI: /docs, health: /healthz)
  MQTT broker  127.0.0.1:{mqtt_port}   (logins and passwords in {creds_dir}/)
               mosquitto_sub -p {mqtt_port} {admin_mqtt} -t 'floodwatch/#' -v
  InfluxDB     http://127.0.0.1:{influx_port}
               influx -port {influx_port} {admin_influx} -database floodwatch \\
                 -execute 'SELECT * FROM water_level ORDER BY time DESC LIMIT 10'
  metrics      http://127.0.0.1:{metrics_port}/metrics   (ingest, Prometheus)
  notifier     what would be sent: {logs / "notify.log"} (routing: config/notify-routing.demo.toml)
               metrics http://127.0.0.1:{notify_metrics_port}/metrics
  logs         {logs}/
  stack.json   {stack_file}   (each service's URL, ports and PID)""",
            flush=True,
        )
        deadline = time.monotonic() + args.run_for if args.run_for else None
        while not stop.wait(0.5):
            for name, proc in apps:
                if proc.poll() is not None:
                    print(
                        f"stack: {name} exited with {proc.returncode}; see "
                        f"{logs / (name + '.log')}",
                        file=sys.stderr,
                    )
                    return 1
            if deadline is not None and time.monotonic() > deadline:
                break
        return 0
    except FloodwatchError as exc:
        print(f"stack: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping…", flush=True)
        # One at a time, street first: the simulator's last readings and `offline` statuses
        # still reach a running ingest.
        for _, proc in reversed(apps):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        for svc in reversed(services):
            svc.stop()
        mark_stopped(stack_file, datetime.now(UTC))
        print("stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
