"""Prometheus text through prometheus-client, from plain values, without servers."""

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
        "# HELP a_total As.\n# TYPE a_total counter\na_total 3.0\n"
        '# HELP b Bs.\n# TYPE b gauge\nb{reason="x\\"y\\\\z"} 1.5\n'
    )


def test_histogram_buckets_are_cumulative() -> None:
    """Per-bucket counts become cumulative buckets with +Inf, sum and count."""
    text = render([histogram("w_seconds", "W.", [0.1, 1.0], [2, 3, 1], 4.5)])
    assert 'w_seconds_bucket{le="0.1"} 2.0' in text
    assert 'w_seconds_bucket{le="1.0"} 5.0' in text
    assert 'w_seconds_bucket{le="+Inf"} 6.0' in text
    assert "w_seconds_sum 4.5" in text and "w_seconds_count 6.0" in text


def test_ingest_metrics_count_alert_events_by_kind_change_and_level() -> None:
    """Alerts by level reach /metrics as one labelled counter."""
    from ingest.metrics import ingest_metrics
    from ingest.pipeline import IngestCounters

    text = render(ingest_metrics(IngestCounters(), 0, None, {("flood", "raised", "hazard"): 2}))
    assert (
        'floodwatch_ingest_alert_events_total{change="raised",kind="flood",level="hazard"} 2.0'
        in text
    )


def test_a_counter_with_no_samples_yet_is_declared_without_values() -> None:
    """Dead letters by reason before the first one: HELP and TYPE, no sample."""
    text = render([Metric("d_total", "Ds.", "counter", [])])
    assert text == "# HELP d_total Ds.\n# TYPE d_total counter\n"


def test_the_api_counters_are_read_at_scrape_time() -> None:
    """The API's plain counters and gauges reach the text as they are when scraped."""
    from api.metrics import Metrics

    metrics = Metrics()
    before = metrics.render().decode()
    metrics.requests.inc(("/v1/sensors", "GET", "200"))
    metrics.requests.inc(("/v1/sensors", "GET", "200"))
    metrics.sse_clients = 2
    after = metrics.render().decode()
    assert "floodwatch_api_requests_total{" not in before
    assert (
        'floodwatch_api_requests_total{method="GET",route="/v1/sensors",status="200"} 2.0' in after
    )
    assert "floodwatch_api_sse_clients 2.0" in after
