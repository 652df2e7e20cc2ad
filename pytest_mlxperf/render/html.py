"""The cross-file comparison as a self-contained HTML page.

The page works offline and from a CI artifact: no script, no external stylesheet or font, every
plot an inline SVG drawn here. Per measurement and metric, one plot shows each results file
(labelled by its backend versions) with every raw sample as a dot and its median as a bar, so
the spread that the significance test weighs is visible, plus the reference median and its
tolerance band. Nothing here imports pytest.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from html import escape

from pytest_mlxperf.gates.comparison import Comparison, Row
from pytest_mlxperf.host.packages import versions, versions_label
from pytest_mlxperf.render.text import explanations, format_change, format_p, summary_line
from pytest_mlxperf.stats.verdicts import Verdict

# statuses whose table cell is filled with their colour
ATTENTION = {v.value for v in (Verdict.REGRESSION, Verdict.IMPROVEMENT, Verdict.INCONCLUSIVE)}
# One colour per status, shared by table cells and plots.
COLOURS = {
    "reference": "#333333",
    Verdict.PASS.value: "#3b6fb6",
    Verdict.REGRESSION.value: "#c62828",
    Verdict.IMPROVEMENT.value: "#2e7d32",
    Verdict.INCONCLUSIVE.value: "#e08a00",
    Verdict.NEW.value: "#7b1fa2",
    Verdict.NOT_COMPARABLE.value: "#9e9e9e",
    Verdict.NOT_GATED.value: "#607d8b",
    "missing": "#bdbdbd",
}


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (steps of 1, 2 or 5 times a power of ten) covering
    ``[low, high]``."""
    span = high - low
    if span <= 0:
        span = abs(high) or 1.0
    raw = span / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        if value >= low - step * 1e-9:
            ticks.append(round(value, 12))
        value += step
    return ticks or [low]


def _number(value: float) -> str:
    """About four significant digits, without exponent."""
    return f"{value:.{0 if value >= 1000 else 1 if value >= 10 else 2 if value >= 1 else 3}f}"


def _tick_text(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    return f"{value:.{decimals}f}"


@dataclass(frozen=True)
class _Series:
    """One file's column in a plot."""

    number: int
    versions: str
    samples: list[float]
    status: str
    change: str


def _series(comparison: Comparison, row: Row) -> list[_Series]:
    """The files in order, each with its samples of the row's metric and its verdict; x labels
    are the versions of the row's backend packages."""
    cells = iter(row.cells)
    out = []
    for n, f in enumerate(comparison.files, 1):
        if n - 1 == comparison.reference_index:
            record, samples = row.reference, row.reference_samples or []
            status, change = "reference", "reference"
        else:
            cell = next(cells)
            record, samples = cell.record, cell.samples(row.metric.name) or []
            status, change = cell.status, format_change(cell)
            change += " n.s." if cell.status_text != cell.status else ""
        packages = versions(record["provenance"]) if record else f.packages
        out.append(_Series(n, versions_label(packages, row.backend), samples, status, change))
    return out


W, H = 640, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 14, 50, 66
CHAR_W = 6.3  # width of one 11px label character, for wrapping x labels


def svg_plot(comparison: Comparison, row: Row) -> str:
    """One metric of one measurement across all files: raw samples as jittered dots, the
    median as a bar, the reference median dashed with its tolerance band shaded, and above
    each file its change and verdict."""
    metric = row.metric
    series = _series(comparison, row)
    values = [v for s in series for v in s.samples]
    tolerance = next(
        (c.comparison.tolerance for c in row.cells if c.comparison is not None),
        metric.default_tolerance,
    )
    ref = statistics.median(row.reference_samples) if row.reference_samples else None
    band = (ref * (1 - tolerance), ref * (1 + tolerance)) if ref is not None else None
    factor, unit = metric.display_unit(max(values))
    span_values = values + (list(band) if band and metric.gated else [])
    low, high = min(span_values), max(span_values)
    pad = (high - low) * 0.08 or abs(high) * 0.05 or 1.0
    ticks = nice_ticks((low - pad) * factor, (high + pad) * factor)
    y_low = min(ticks[0], (low - pad) * factor)
    y_high = max(ticks[-1], (high + pad) * factor)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else abs(y_high - y_low) or 1.0

    def y_shown(shown: float) -> float:  # a value in display units -> its y coordinate
        return TOP + (H - TOP - BOTTOM) * (1 - (shown - y_low) / (y_high - y_low))

    def y(value: float) -> float:
        return y_shown(value * factor)

    plot_w = W - LEFT - RIGHT
    slot = plot_w / len(series)
    direction = "higher is better" if metric.higher_is_better else "lower is better"
    gated = "" if metric.gated else ", not gated"
    title = f"{metric.name} ({unit}, {direction}{gated})"
    out = [
        f'<svg class="plot" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" '
        f'aria-label="{escape(row.label)} {metric.name}">',
        f'<text x="{LEFT}" y="16" class="title">{escape(title)}</text>',
    ]
    if band is not None and metric.gated:
        top, bottom = y(band[1]), y(band[0])
        out.append(
            f'<rect x="{LEFT}" y="{top:.1f}" width="{plot_w}" height="{bottom - top:.1f}" '
            f'class="band"><title>reference median ± {tolerance:.0%} tolerance</title></rect>'
        )
    for tick in ticks:
        ty = y_shown(tick)
        out.append(f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{ty:.1f}" y2="{ty:.1f}" class="grid"/>')
        out.append(
            f'<text x="{LEFT - 6}" y="{ty + 4:.1f}" class="tick" text-anchor="end">'
            f"{_tick_text(tick, step)}</text>"
        )
    if ref is not None:
        out.append(
            f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{y(ref):.1f}" y2="{y(ref):.1f}" '
            f'class="refline"><title>reference median {escape(metric.format(ref))}'
            "</title></line>"
        )
    for i, one in enumerate(series):
        n, samples, status = one.number, one.samples, one.status
        cx = LEFT + slot * (i + 0.5)
        colour = COLOURS.get(status, COLOURS["missing"])
        hollow = status in (Verdict.NOT_COMPARABLE.value, "missing")
        for j, value in enumerate(samples):
            # deterministic jitter: spread a file's dots evenly over a third of its slot
            offset = (j / (len(samples) - 1) - 0.5) * slot * 0.33 if len(samples) > 1 else 0.0
            fill = "none" if hollow else colour
            out.append(
                f'<circle cx="{cx + offset:.1f}" cy="{y(value):.1f}" r="3.6" fill="{fill}" '
                f'stroke="{colour}" fill-opacity="0.55"><title>#{n}: '
                f"{escape(metric.format(value))}</title></circle>"
            )
        if samples:
            med = statistics.median(samples)
            half = slot * 0.28
            out.append(
                f'<line x1="{cx - half:.1f}" x2="{cx + half:.1f}" y1="{y(med):.1f}" '
                f'y2="{y(med):.1f}" stroke="{colour}" class="median"><title>#{n} median '
                f"{escape(metric.format(med))}</title></line>"
            )
        quiet = status in ("reference", Verdict.PASS.value)
        for line_y, text in ((TOP - 20, one.change), (TOP - 7, "" if quiet else status)):
            out.append(
                f'<text x="{cx:.1f}" y="{line_y}" class="change" fill="{colour}" '
                f'text-anchor="middle">{escape(text)}</text>'
            )
        out.append(f'<text x="{cx:.1f}" y="{H - BOTTOM + 16}" class="xlabel" text-anchor="middle">')
        parts = [f"#{n}"]
        for package in one.versions.split(" / "):  # "name version", wrapped if it is too wide
            fits = len(package) * CHAR_W <= slot
            parts += [package] if fits else package.rsplit(" ", 1)
        for k, part in enumerate(parts):
            dy = 0 if k == 0 else 13
            out.append(f'<tspan x="{cx:.1f}" dy="{dy}">{escape(part)}</tspan>')
        out.append("</text>")
    out.append(
        f'<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{H - BOTTOM}" class="axis"/>'
        f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{H - BOTTOM}" y2="{H - BOTTOM}" class="axis"/>'
    )
    out.append("</svg>")
    return "\n".join(out)


# --------------------------------------------------------------------------- HTML page

_CSS = """
body { font: 14px/1.45 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       margin: 16px; }
h1 { font-size: 22px; margin: 0 0 6px; } h2 { font-size: 17px; margin: 28px 0 4px; }
.meta, .identity { color: #555; } .identity { font-size: 12px; margin-bottom: 6px; }
table { border-collapse: collapse; margin: 10px 0; font-size: 11.5px; }
th, td { border: 1px solid #ddd; padding: 2px 5px; text-align: right; white-space: nowrap; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
td.m { white-space: normal; min-width: 120px; vertical-align: top; }
td.status { font-weight: 600; text-align: center; }
.alert { border-left: 5px solid #c62828; background: #fdecea; padding: 8px 12px; }
.ok { border-left: 5px solid #2e7d32; background: #edf7ee; padding: 8px 12px; }
.wide { overflow-x: auto; }
.notes li { font-family: ui-monospace, Menlo, monospace; font-size: 12px; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(640px, 1fr)); gap: 8px; }
svg.plot { background: #fff; border: 1px solid #e3e3e3; }
svg .title { font-size: 13px; font-weight: 600; fill: #222; }
svg .tick, svg .xlabel { font-size: 11px; fill: #444; } svg .change { font-size: 11px; }
svg .grid { stroke: #eee; } svg .axis { stroke: #888; }
svg .band { fill: #3b6fb6; fill-opacity: 0.08; }
svg .refline { stroke: #333; stroke-dasharray: 5 4; stroke-width: 1; }
svg .median { stroke-width: 3; }
"""


def _status_cell(status: str, text: str, title: str) -> str:
    """A verdict cell: solid colour where it asks for attention, coloured text otherwise."""
    colour = COLOURS.get(status, COLOURS["missing"])
    loud = status in ATTENTION
    style = f"background:{colour};color:#fff" if loud else f"color:{colour}"
    return f'<td class="status" style="{style}" title="{title}">{escape(text)}</td>'


def _files_table(comparison: Comparison) -> str:
    rows = []
    for n, f in enumerate(comparison.files, 1):
        provenance = next(iter(f.records.values()), {}).get("provenance", {})
        role = "reference" if n - 1 == comparison.reference_index else ""
        rows.append(
            f"<tr><td>#{n}</td><td class='l'>{escape(role)}</td>"
            f"<td class='l'>{escape(str(f.path))}</td><td class='l'>{escape(f.label)}</td>"
            f"<td class='l'>{escape(f.machine_id)}</td>"
            f"<td class='l'>{escape(str(provenance.get('date', '?')))}</td>"
            f"<td class='l'>{escape(str(provenance.get('git_commit') or '?')[:12])}</td>"
            f"<td>{len(f.records)}</td></tr>"
        )
    head = (
        "<tr><th>#</th><th class='l'></th><th class='l'>file</th><th class='l'>versions</th>"
        "<th class='l'>machine</th><th class='l'>date</th><th class='l'>commit</th>"
        "<th>measurements</th></tr>"
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _comparison_table(comparison: Comparison) -> str:
    ref_no = comparison.reference_index + 1
    head = [
        "<th class='l'>measurement</th><th class='l'>metric</th>",
        f"<th>#{ref_no} (ref)</th>",
    ]
    for n, _ in comparison.others:
        head.append(f"<th>#{n}</th><th>change (p)</th><th>verdict</th>")
    span: dict[tuple[str, str], int] = {}  # a measurement's label spans its rows
    for row in comparison.rows:
        span[row.test, row.key] = span.get((row.test, row.key), 0) + 1
    body = []
    previous = None
    for row in comparison.rows:
        tds = []
        if (row.test, row.key) != previous:
            previous = (row.test, row.key)
            tds.append(f"<td class='l m' rowspan='{span[previous]}'>{escape(row.label)}</td>")
        # one unit per row, named beside the metric, so the medians are bare numbers
        medians = [
            statistics.median(samples)
            for samples in (row.reference_samples, *(c.samples(row.metric.name) for c in row.cells))
            if samples
        ]
        factor, unit = row.metric.display_unit(max(medians))

        def shown(samples: list[float] | None, factor: float = factor) -> str:
            return _number(statistics.median(samples) * factor) if samples else "-"

        tds += [
            f"<td class='l'>{row.metric.name} ({escape(unit)})</td>",
            f"<td>{shown(row.reference_samples)}</td>",
        ]
        for cell in row.cells:
            title = escape(cell.describe())
            p = cell.comparison.p_value if cell.comparison else None
            tds.append(
                f"<td>{shown(cell.samples(row.metric.name))}</td>"
                f"<td>{escape(format_change(cell))}{'' if p is None else f' ({format_p(p)})'}</td>"
            )
            tds.append(_status_cell(cell.status, cell.status_text, title))
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f"<div class='wide'><table><tr>{''.join(head)}</tr>{''.join(body)}</table></div>"


def _identity(row: Row) -> str:
    """The line under a measurement's heading: test, backend, model identity and workload."""
    record = row.reference or next(c.record for c in row.cells if c.record is not None)
    model = record["model"]
    details = ", ".join(f"{k} {v}" for k, v in model.items() if k not in ("name", "backend"))
    workload = ", ".join(f"{k}={v}" for k, v in record["workload"].items() if v is not None)
    return escape(
        f"{record['test']} · backend {record['backend']} · model {model.get('name')}"
        f"{f' ({details})' if details else ''} · workload {workload}"
    )


def html_report(comparison: Comparison) -> str:
    """The whole page: files and versions, verdict summary, regressions, the colour-coded
    comparison table, then per measurement one plot per metric."""
    regressions = comparison.regressions
    if regressions:
        headline = (
            f'<div class="alert"><b>{len(regressions)} regression(s)</b> against '
            f"#{comparison.reference_index + 1}</div>"
        )
    else:
        headline = '<div class="ok"><b>No regression</b> against the reference.</div>'
    notes = explanations(comparison)
    note_list = (
        "<ul class='notes'>" + "".join(f"<li>{escape(n)}</li>" for n in notes) + "</ul>"
        if notes
        else ""
    )
    sections = []
    measurements: dict[tuple[str, str], list[Row]] = {}
    for row in comparison.rows:
        measurements.setdefault((row.test, row.key), []).append(row)
    for rows in measurements.values():
        plots = "".join(svg_plot(comparison, row) for row in rows)
        sections.append(
            f"<h2>{escape(rows[0].label)}</h2><div class='identity'>{_identity(rows[0])}</div>"
            f"<div class='plots'>{plots}</div>"
        )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<title>mlxperf upgrade report</title>"
        f"<style>{_CSS}</style></head><body>"
        "<h1>mlxperf upgrade report</h1>"
        f"<div class='meta'>{escape(summary_line(comparison))}. Dots: every repetition; bar: "
        "median; dashed line and band: reference median and tolerance.</div>"
        f"{_files_table(comparison)}{headline}{note_list}{_comparison_table(comparison)}"
        f"{''.join(sections)}</body></html>\n"
    )
