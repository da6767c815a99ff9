"""Ingest's own metrics for Prometheus: what was received, stored and dead-lettered (by reason),
how long InfluxDB writes take, and the disk outbox's state."""

from __future__ import annotations

from collections.abc import Mapping

from floodwatch.metrics import Metric, histogram
from ingest.outbox import OutboxStatus
from ingest.pipeline import WRITE_SECONDS_BOUNDS, IngestCounters


def ingest_metrics(
    counters: IngestCounters,
    backlog: int,
    outbox: OutboxStatus | None,
    alert_events: Mapping[tuple[str, str, str], int] | None = None,
    partitions: tuple[int, frozenset[int]] | None = None,  # (count, owned): partitioned ingest
) -> list[Metric]:
    c = counters
    metrics = [
        Metric(
            "floodwatch_ingest_messages_received_total",
            "MQTT messages delivered by the broker.",
            "counter",
            [({}, c.received)],
        ),
        Metric(
            "floodwatch_ingest_messages_acknowledged_total",
            "MQTT messages stored (or dead-lettered) and acknowledged.",
            "counter",
            [({}, c.messages)],
        ),
        Metric(
            "floodwatch_ingest_readings_stored_total",
            "Readings written to InfluxDB directly.",
            "counter",
            [({}, c.readings_stored)],
        ),
        Metric(
            "floodwatch_ingest_statuses_stored_total",
            "Sensor status changes written to InfluxDB.",
            "counter",
            [({}, c.statuses_stored)],
        ),
        Metric(
            "floodwatch_ingest_deadlettered_total",
            "Messages or items refused, by reason code.",
            "counter",
            [({"reason": code}, n) for code, n in sorted(c.deadletter_counts().items())],
        ),
        Metric(
            "floodwatch_ingest_retained_readings_total",
            "Readings sensors published with the retain flag (judged once, never replayed).",
            "counter",
            [({}, c.retained_readings)],
        ),
        Metric(
            "floodwatch_ingest_write_retries_total",
            "InfluxDB writes retried (InfluxDB down, slow or refusing).",
            "counter",
            [({}, c.write_retries)],
        ),
        histogram(
            "floodwatch_ingest_write_seconds",
            "InfluxDB write latency per batch.",
            WRITE_SECONDS_BOUNDS,
            c.write_buckets,
            c.write_seconds,
        ),
        Metric(
            "floodwatch_ingest_backlog_messages",
            "Messages received but not yet stored.",
            "gauge",
            [({}, backlog)],
        ),
        Metric(
            "floodwatch_ingest_outbox_spilled_lines_total",
            "Lines written to the disk outbox during InfluxDB outages.",
            "counter",
            [({}, c.outbox_spilled)],
        ),
        Metric(
            "floodwatch_ingest_outbox_drained_lines_total",
            "Lines drained from the disk outbox to InfluxDB.",
            "counter",
            [({}, c.outbox_drained)],
        ),
    ]
    if alert_events is not None:
        metrics.append(
            Metric(
                "floodwatch_ingest_alert_events_total",
                "Alert events emitted, by kind, change and the sensor's level at the time.",
                "counter",
                [
                    ({"kind": kind, "change": change, "level": level}, n)
                    for (kind, change, level), n in sorted(alert_events.items())
                ],
            )
        )
    if partitions is not None:
        count, owned = partitions
        metrics.append(
            Metric(
                "floodwatch_ingest_partition_owned",
                "1 for each partition this worker owns (judges and stores), 0 for the others.",
                "gauge",
                [({"partition": str(p)}, int(p in owned)) for p in range(count)],
            )
        )
    if outbox is not None:
        metrics += [
            Metric(
                "floodwatch_ingest_outbox_lines",
                "Lines waiting in the disk outbox.",
                "gauge",
                [({}, outbox.lines)],
            ),
            Metric(
                "floodwatch_ingest_outbox_bytes",
                "Size of the disk outbox's batches.",
                "gauge",
                [({}, outbox.bytes)],
            ),
            Metric(
                "floodwatch_ingest_outbox_oldest_seconds",
                "Age of the oldest line in the disk outbox (0 when empty).",
                "gauge",
                [({}, outbox.oldest_age_s)],
            ),
        ]
    return metrics
