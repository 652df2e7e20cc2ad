"""The cross-file comparison as GitHub-flavoured Markdown: fits a pull-request comment or
``$GITHUB_STEP_SUMMARY``. Nothing here imports pytest."""

from __future__ import annotations

from pytest_mlxperf.gates.comparison import Comparison
from pytest_mlxperf.render.text import (
    explanations,
    format_change,
    format_median,
    format_p,
    summary_line,
)
from pytest_mlxperf.stats.verdicts import Verdict

_MARK = {
    Verdict.REGRESSION.value: "🔴 **regression**",
    Verdict.IMPROVEMENT.value: "🟢 improvement",
    Verdict.INCONCLUSIVE.value: "🟡 inconclusive",
    Verdict.NOT_COMPARABLE.value: "⚪ not comparable",
}


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(comparison: Comparison) -> str:
    """The comparison as GitHub-flavoured Markdown: the files and their versions, the verdict
    counts, the side-by-side table, then regressions and not-comparable measurements."""
    files = [
        f"- **#{n}**{' (reference)' if n - 1 == comparison.reference_index else ''}: "
        f"`{f.path}`: {_md(f.label)}"
        for n, f in enumerate(comparison.files, 1)
    ]
    ref_no = comparison.reference_index + 1
    header = ["measurement", "metric", f"#{ref_no} (ref)"]
    for n, _ in comparison.others:
        header += [f"#{n}", "change", "p", "verdict"]
    lines = [
        "## mlxperf upgrade comparison",
        "",
        *files,
        "",
        f"{len(comparison.regressions)} regression(s); {summary_line(comparison)}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|",
    ]
    for row in comparison.rows:
        cells = [f"`{_md(row.label)}`", row.metric.name]
        cells.append(format_median(row.metric, row.reference_samples))
        for cell in row.cells:
            cells += [
                format_median(row.metric, cell.samples(row.metric.name)),
                format_change(cell),
                format_p(cell.comparison.p_value) if cell.comparison else "",
                _MARK.get(cell.status, cell.status_text),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    notes = explanations(comparison)
    if notes:
        lines += ["", *(f"- {_md(note)}" for note in notes)]
    return "\n".join(lines) + "\n"
