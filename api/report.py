"""The report of one flood episode (CONTRACT section 3's flood event), as a printable page and
as CSV: the streets, peak depth and time, minutes to peak and to drain, the alert and
acknowledgement timeline, and a depth chart per sensor.

Pure: the route gathers the episode, its alert changes and each sensor's series and passes
them in with the time; nothing here reads a clock or a socket. The page is plain HTML with
inline SVG charts drawn here, so it prints (and prints to PDF) without JavaScript; it loads
one stylesheet, /static/report.css, and holds no script and no inline style, so a strict
Content-Security-Policy needs no exception. Words come from the message catalogues.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape

from api import i18n
from api.alerts import AlertRecord, FloodEpisode
from api.i18n import Lang
from api.times import WARD_ZONE, iso, zone
from floodwatch.contract import STREET_LEVEL_NAMES, TIDE_LEVEL_NAMES
from floodwatch.registry import Sensor

_WARD = zone(WARD_ZONE)
# Shown where a figure is unknown (an en dash, as printed tables use).
NONE = "\u2013"
CHANGES = ("raised", "escalated", "deescalated", "acknowledged", "cleared")
# Chart geometry in SVG user units (scaled to the page's width by the stylesheet).
CHART_W, CHART_H = 720, 220
PAD_L, PAD_R, PAD_T, PAD_B = 48, 16, 12, 30


@dataclass(frozen=True, slots=True)
class Series:
    """A sensor's depth over the episode: epoch ns and cm, oldest first."""

    times_ns: Sequence[int]
    level_cm: Sequence[float | None]


@dataclass(frozen=True, slots=True)
class TimelineRow:
    """One change of one alert during the episode."""

    time_ns: int
    sensor_id: str
    kind: str
    change: str
    level: int | None
    level_name: str | None
    depth_cm: float | None
    who: str | None
    note: str | None


@dataclass(frozen=True, slots=True)
class EpisodeReport:
    episode: FloodEpisode
    sensors: Sequence[Sensor]  # those that took part, in registry order
    timeline: Sequence[TimelineRow]
    series: Mapping[str, Series] = field(default_factory=dict)
    generated_ns: int = 0


def timeline_rows(
    records: Sequence[AlertRecord], episode: FloodEpisode, until_ns: int
) -> list[TimelineRow]:
    """The changes of this episode's alerts, oldest first: flood alerts that carry its id,
    and the flood and rising alerts of its sensors within its time."""
    members = set(episode.sensors)
    rows: list[TimelineRow] = []
    for record in records:
        when = record.changed_at_ns
        if when is None:
            continue
        payload = record.payload
        own = payload.get("episode_id")
        if own is not None:
            if own != episode.event_id:
                continue
        elif record.sensor_id not in members or not episode.start_ns <= when <= until_ns:
            continue
        change = payload.get("change")
        depth = payload.get("depth_cm")
        who, note = payload.get("who"), payload.get("note")
        rows.append(
            TimelineRow(
                time_ns=when,
                sensor_id=record.sensor_id,
                kind=record.kind,
                change=change if isinstance(change, str) else "other",
                level=record.level,
                level_name=record.level_name,
                depth_cm=float(depth) if isinstance(depth, int | float) else None,
                who=who if isinstance(who, str) and change == "acknowledged" else None,
                note=note if isinstance(note, str) and change == "acknowledged" else None,
            )
        )
    rows.sort(key=lambda r: (r.time_ns, r.sensor_id, r.kind))
    return rows


# -- formatting -------------------------------------------------------------------------------


def local_time(time_ns: int, lang: Lang, *, seconds: bool = False) -> str:
    """26/11/2026 18:05 (vi) or 2026-11-26 18:05 (en), in the ward's time."""
    text = iso(time_ns, _WARD)
    clock = text[11:19] if seconds else text[11:16]
    if lang == "vi":
        return f"{text[8:10]}/{text[5:7]}/{text[:4]} {clock}"
    return f"{text[:10]} {clock}"


def _number(value: float | None, lang: Lang, digits: int = 1) -> str:
    if value is None:
        return NONE
    text = f"{value:.{digits}f}"
    return text.replace(".", ",") if lang == "vi" else text


def _streets(report: EpisodeReport, lang: Lang) -> list[str]:
    english = {s.street: s.street_en for s in report.sensors}
    return [english.get(s, s) if lang == "en" else s for s in report.episode.streets]


def _sensor_label(sensor: Sensor | None, sensor_id: str, lang: Lang) -> str:
    if sensor is None:
        return sensor_id
    return sensor.name_en if lang == "en" else sensor.name


def summary_rows(report: EpisodeReport, lang: Lang) -> list[tuple[str, str]]:
    """(label, value) pairs of the episode's figures, as both the page and the CSV show."""
    e = report.episode
    t = i18n.text
    by_id = {s.id: s for s in report.sensors}
    peak_sensor = by_id.get(e.peak_sensor or "")
    level = NONE
    if e.max_level_name is not None:
        kind = peak_sensor.kind if peak_sensor is not None else "street"
        level = i18n.level_label(lang, kind, e.max_level_name)

    def minutes(value: float | None) -> str:
        return NONE if value is None else t(lang, "report.unit.minutes", n=_number(value, lang, 0))

    return [
        (t(lang, "report.event_id"), e.event_id),
        (t(lang, "report.start"), local_time(e.start_ns, lang)),
        (
            t(lang, "report.end"),
            local_time(e.end_ns, lang) if e.end_ns is not None else t(lang, "report.ongoing"),
        ),
        (t(lang, "report.streets"), ", ".join(_streets(report, lang)) or NONE),
        (
            t(lang, "report.peak_depth"),
            NONE if e.peak_cm is None else t(lang, "report.unit.cm", n=_number(e.peak_cm, lang)),
        ),
        (t(lang, "report.peak_time"), local_time(e.peak_ns, lang) if e.peak_ns else NONE),
        (
            t(lang, "report.peak_sensor"),
            f"{_sensor_label(peak_sensor, e.peak_sensor, lang)} ({e.peak_sensor})"
            if e.peak_sensor
            else NONE,
        ),
        (t(lang, "report.max_level"), level),
        (t(lang, "report.minutes_to_peak"), minutes(e.minutes_to_peak)),
        (t(lang, "report.minutes_to_drain"), minutes(e.minutes_to_drain)),
    ]


# -- the chart --------------------------------------------------------------------------------


def chart_svg(sensor: Sensor, series: Series, start_ns: int, end_ns: int, lang: Lang) -> str:
    """A depth chart as inline SVG: the series as a line, the alert thresholds as dashed
    lines, hour ticks in the ward's time. Presentation attributes only (no style="")."""
    points = [
        (t, v) for t, v in zip(series.times_ns, series.level_cm, strict=True) if v is not None
    ]
    if end_ns <= start_ns:
        end_ns = start_ns + 3600 * 10**9
    top = max([v for _, v in points] + [sensor.thresholds_cm[0] * 1.2, 10.0])
    bottom = min([0.0] + [v for _, v in points])
    plot_w, plot_h = CHART_W - PAD_L - PAD_R, CHART_H - PAD_T - PAD_B

    def x(t: int) -> float:
        return PAD_L + plot_w * (t - start_ns) / (end_ns - start_ns)

    def y(v: float) -> float:
        return PAD_T + plot_h * (1 - (v - bottom) / (top - bottom))

    name = escape(_sensor_label(sensor, sensor.id, lang))
    parts = [
        f'<svg class="chart" viewBox="0 0 {CHART_W} {CHART_H}" role="img" '
        f'aria-label="{name}" xmlns="http://www.w3.org/2000/svg">',
        f'<rect x="{PAD_L}" y="{PAD_T}" width="{plot_w}" height="{plot_h}" fill="#ffffff" '
        'stroke="#888888" stroke-width="1"/>',
    ]
    # y ticks: a handful of round depths.
    step = next(s for s in (1, 2, 5, 10, 20, 25, 50, 100, 200, 500) if (top - bottom) / s <= 6)
    value = (bottom // step) * step
    while value <= top:
        if value >= bottom:
            parts.append(
                f'<line x1="{PAD_L - 4}" x2="{PAD_L}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
                'stroke="#444444"/>'
                f'<text x="{PAD_L - 6}" y="{y(value) + 4:.1f}" text-anchor="end" font-size="11" '
                f'fill="#222222">{value:g}</text>'
            )
        value += step
    # x ticks: whole hours (or quarter hours in a short episode) of the ward's clock.
    span_h = (end_ns - start_ns) / 3600e9
    tick = 3600 * 10**9 * max(1, round(span_h / 8)) if span_h > 2 else 900 * 10**9
    offset = 7 * 3600 * 10**9  # the ward is UTC+07:00 all year
    t = ((start_ns + offset) // tick + 1) * tick - offset
    while t < end_ns:
        label = iso(t, _WARD)[11:16]
        parts.append(
            f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{PAD_T + plot_h}" '
            f'y2="{PAD_T + plot_h + 4}" stroke="#444444"/>'
            f'<text x="{x(t):.1f}" y="{PAD_T + plot_h + 17}" text-anchor="middle" '
            f'font-size="11" fill="#222222">{label}</text>'
        )
        t += tick
    ladder = TIDE_LEVEL_NAMES if sensor.kind == "tide" else STREET_LEVEL_NAMES
    for rung, threshold in enumerate(sensor.thresholds_cm, start=1):
        if bottom <= threshold <= top:
            label = i18n.level_label(lang, sensor.kind, ladder[min(rung, len(ladder) - 1)])
            parts.append(
                f'<line x1="{PAD_L}" x2="{PAD_L + plot_w}" y1="{y(threshold):.1f}" '
                f'y2="{y(threshold):.1f}" stroke="#c0392b" stroke-width="1" '
                'stroke-dasharray="5 4"/>'
                f'<text x="{PAD_L + plot_w - 4}" y="{y(threshold) - 3:.1f}" text-anchor="end" '
                f'font-size="10" fill="#c0392b">{escape(label)}</text>'
            )
    if points:
        path = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
        parts.append(f'<polyline points="{path}" fill="none" stroke="#1f5fa8" stroke-width="2"/>')
        peak_t, peak_v = max(points, key=lambda p: p[1])
        parts.append(
            f'<circle cx="{x(peak_t):.1f}" cy="{y(peak_v):.1f}" r="4" fill="#1f5fa8"/>'
            f'<text x="{x(peak_t) + 7:.1f}" y="{y(peak_v) + 14:.1f}" '
            f'text-anchor="start" font-size="12" font-weight="bold" fill="#1f5fa8">'
            f"{escape(_number(peak_v, lang))} cm</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


# -- the page ---------------------------------------------------------------------------------


def report_html(report: EpisodeReport, lang: Lang, base_path: str) -> str:
    """The printable page. `base_path` is the report's own path (links to CSV, other language)."""
    t = i18n.text
    e = report.episode
    by_id = {s.id: s for s in report.sensors}
    other: Lang = "en" if lang == "vi" else "vi"
    out = [
        "<!doctype html>",
        f'<html lang="{lang}">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(t(lang, 'report.title', id=e.event_id))}</title>",
        '<link rel="icon" href="data:,">',  # no favicon request (a 404 in every log)
        '<link rel="stylesheet" href="/static/report.css">',
        "</head>",
        "<body>",
        '<header class="report-header">',
        f"<h1>{escape(t(lang, 'report.heading'))}</h1>",
        f'<p class="subtitle">{escape(", ".join(_streets(report, lang)))} · '
        f"{escape(local_time(e.start_ns, lang))}</p>",
        '<nav class="no-print">',
        f'<a href="{escape(base_path)}?lang={other}" hreflang="{other}">'
        f"{escape(t(lang, 'report.other_language'))}</a> · ",
        f'<a href="{escape(base_path)}.csv">{escape(t(lang, "report.csv"))}</a>',
        "</nav>",
        "</header>",
        '<section class="summary">',
        f"<h2>{escape(t(lang, 'report.summary'))}</h2>",
        "<dl>",
    ]
    for label, value in summary_rows(report, lang):
        out.append(f"<div><dt>{escape(label)}</dt><dd>{escape(value)}</dd></div>")
    out += ["</dl>", "</section>", '<section class="timeline">']
    out.append(f"<h2>{escape(t(lang, 'report.timeline'))}</h2>")
    if not report.timeline:
        out.append(f"<p>{escape(t(lang, 'report.timeline_empty'))}</p>")
    else:
        # No street column: a sensor's name begins with its street.
        columns = ("time", "sensor", "kind", "change", "level", "depth", "who", "note")
        out.append("<table><thead><tr>")
        out += [f"<th>{escape(t(lang, f'report.col.{c}'))}</th>" for c in columns]
        out.append("</tr></thead><tbody>")
        for row in report.timeline:
            sensor = by_id.get(row.sensor_id)
            change = row.change if row.change in CHANGES else "other"
            level = i18n.level_label(lang, sensor.kind if sensor else "street", row.level_name)
            if row.kind != "flood":
                level = ""  # only a flood alert's level is its own
            cells = (
                local_time(row.time_ns, lang, seconds=True),
                f"{_sensor_label(sensor, row.sensor_id, lang)} ({row.sensor_id})",
                i18n.kind_label(lang, row.kind),
                t(lang, f"report.change.{change}"),
                level,
                _number(row.depth_cm, lang),
                row.who or "",
                row.note or "",
            )
            out.append(
                f'<tr class="change-{change}">'
                + "".join(f"<td>{escape(c)}</td>" for c in cells)
                + "</tr>"
            )
        out.append("</tbody></table>")
    out += ["</section>", '<section class="charts">']
    out.append(f"<h2>{escape(t(lang, 'report.charts'))}</h2>")
    start = e.start_ns - 30 * 60 * 10**9
    end = (e.end_ns if e.end_ns is not None else report.generated_ns) + 30 * 60 * 10**9
    for sensor in report.sensors:
        series = report.series.get(sensor.id, Series((), ()))
        caption = t(
            lang,
            "report.chart.caption",
            name=_sensor_label(sensor, sensor.id, lang),
            sensor=sensor.id,
            zone="UTC+07:00",
        )
        out.append('<figure class="chart-figure">')
        if any(v is not None for v in series.level_cm):
            out.append(chart_svg(sensor, series, start, end, lang))
        else:
            out.append(f'<p class="no-data">{escape(t(lang, "report.chart.no_data"))}</p>')
        out.append(f"<figcaption>{escape(caption)}</figcaption></figure>")
    out += [
        "</section>",
        '<footer class="report-footer">',
        f"<p>{escape(t(lang, 'report.generated', time=local_time(report.generated_ns, lang)))}</p>",
        "</footer>",
        "</body>",
        "</html>",
    ]
    return "\n".join(out) + "\n"


# -- CSV --------------------------------------------------------------------------------------

CSV_SUMMARY_FIELDS = (
    "event_id",
    "start",
    "end",
    "streets",
    "peak_cm",
    "peak_time",
    "peak_sensor",
    "max_level",
    "max_level_name",
    "minutes_to_peak",
    "minutes_to_drain",
)
CSV_TIMELINE_FIELDS = (
    "time",
    "sensor",
    "street",
    "kind",
    "change",
    "level",
    "level_name",
    "depth_cm",
    "who",
    "note",
)


def _cell(text: str) -> str:
    """Free text for a spreadsheet: a note starting with = + - or @ would run as a formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def report_csv(report: EpisodeReport, lang: Lang) -> str:
    """The same figures as CSV, in three blocks separated by an empty line: the summary
    (`field,value`), the timeline, and every sensor's depth series. Times are ISO 8601 in the
    ward's zone; names are Vietnamese (lang=vi) or English; level names are the contract's."""
    e = report.episode
    by_id = {s.id: s for s in report.sensors}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")

    def when(time_ns: int | None) -> str:
        return iso(time_ns, _WARD) if time_ns is not None else ""

    def num(value: float | None) -> str:
        return "" if value is None else f"{value:g}"

    writer.writerow(("field", "value"))
    summary = {
        "event_id": e.event_id,
        "start": when(e.start_ns),
        "end": when(e.end_ns),
        "streets": "; ".join(_streets(report, lang)),
        "peak_cm": num(e.peak_cm),
        "peak_time": when(e.peak_ns),
        "peak_sensor": e.peak_sensor or "",
        "max_level": "" if e.max_level is None else str(e.max_level),
        "max_level_name": e.max_level_name or "",
        "minutes_to_peak": num(e.minutes_to_peak),
        "minutes_to_drain": num(e.minutes_to_drain),
    }
    writer.writerows(summary.items())
    writer.writerow(())
    writer.writerow(CSV_TIMELINE_FIELDS)
    for row in report.timeline:
        sensor = by_id.get(row.sensor_id)
        street = (sensor.street_en if lang == "en" else sensor.street) if sensor else ""
        writer.writerow(
            (
                when(row.time_ns),
                row.sensor_id,
                street,
                row.kind,
                row.change,
                "" if row.level is None else row.level,
                row.level_name or "",
                num(row.depth_cm),
                _cell(row.who or ""),
                _cell(row.note or ""),
            )
        )
    writer.writerow(())
    writer.writerow(("time", "sensor", "level_cm"))
    for sensor in report.sensors:
        series = report.series.get(sensor.id)
        if series is None:
            continue
        for time_ns, level in zip(series.times_ns, series.level_cm, strict=True):
            if level is not None:
                writer.writerow((when(time_ns), sensor.id, num(level)))
    return out.getvalue()
