"""Prometheus text rendering, without servers."""

from __future__ import annotations

from floodwatch.metrics import Metric, histogram, render


def test_counters_gauges_and_label_escaping() -> None:
    """Each metric gets HELP and TYPE lines; label values escape quotes and backslashes."""
    text = render(
        [
            Metric("a_total", "As.", "counter", [({}, 3)]),
            Metric("b", "Bs.", "gauge", [({"reason": 'x"y\\z'}, 1.5)]),
        ]
    )
    assert text == (
        "# HELP a_total As.\n# TYPE a_total counter\na_total 3\n"
        '# HELP b Bs.\n# TYPE b gauge\nb{reason="x\\"y\\\\z"} 1.5\n'
    )


def test_histogram_buckets_are_cumulative() -> None:
    """Per-bucket counts become cumulative buckets with +Inf, sum and count."""
    text = render([histogram("w_seconds", "W.", [0.1, 1.0], [2, 3, 1], 4.5)])
    assert 'w_seconds_bucket{le="0.1"} 2' in text
    assert 'w_seconds_bucket{le="1.0"} 5' in text
    assert 'w_seconds_bucket{le="+Inf"} 6' in text
    assert "w_seconds_sum 4.5" in text and "w_seconds_count 6" in text


def test_ingest_metrics_count_alert_events_by_kind_change_and_level() -> None:
    """Alerts by level reach /metrics as one labelled counter."""
    from ingest.metrics import ingest_metrics
    from ingest.pipeline import IngestCounters

    text = render(ingest_metrics(IngestCounters(), 0, None, {("flood", "raised", "hazard"): 2}))
    assert (
        'floodwatch_ingest_alert_events_total{kind="flood",change="raised",level="hazard"} 2'
        in text
    )
