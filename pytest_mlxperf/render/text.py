"""Plain-text rendering: the terminal summary of a pytest run, the backends side by side, and
the cross-file comparison table of ``mlxperf compare``, all through one aligner and each
metric's own unit formatter (``Metric.format``).

Everything here works on result *records* (``results.Record``) and on the comparison model
(``comparison.Comparison``). Nothing here imports pytest.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from pytest_mlxperf.gates.comparison import Cell, Comparison
from pytest_mlxperf.stats.metrics import METRICS, Metric
from pytest_mlxperf.stats.process_stats import ProcessComparison
from pytest_mlxperf.stats.verdicts import Verdict
from pytest_mlxperf.store.results import Record


def aligned(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A fixed-width table: columns padded to their widest cell, a dashed line under the
    header, trailing spaces trimmed."""
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, body)])


# --------------------------------------------------------------------------- a pytest run

INFERENCE_METRICS = ("prompt_tps", "generation_tps", "ttft", "peak_memory", "load_time")


def _value(record: Record, name: str) -> str:
    value = record["medians"].get(name)
    return "-" if value is None else METRICS[name].format(value)


def _cell(record: Record, name: str) -> str:
    text = _value(record, name)
    change = next((c["change"] for c in record["comparisons"] if c["metric"] == name), None)
    return text if change is None else f"{text} ({change:+.1%})"


def _kind(record: Record) -> tuple[str, ...]:
    """The metrics a record has, in ``METRICS`` order: records of one kind (inference,
    fine-tuning, a timed callable) share a table."""
    return tuple(name for name in METRICS if name in record["medians"])


def table(records: Sequence[Record]) -> str:
    """One fixed-width table per kind of measurement: a row per measurement, a column per
    metric it has (its median and, in brackets, the change against the baseline)."""
    kinds: dict[tuple[str, ...], list[Record]] = {}
    for r in records:
        kinds.setdefault(_kind(r), []).append(r)
    tables = []
    for names, group in kinds.items():
        header = ("test", "backend", "model", "workload", *(METRICS[n].label for n in names))
        body = [
            (
                r["test"].split("::", 1)[-1],
                r["backend"],
                r["model"]["name"],
                r["workload_label"],
                *(_cell(r, name) for name in names),
                r["verdict"] + (" (saved)" if r["saved"] else ""),
            )
            for r in group
        ]
        tables.append(aligned((*header, "verdict"), body))
    return "\n\n".join(tables)


BACKEND_HEADERS = (
    "model",
    "workload",
    "backend",
    "quantization",
    *(METRICS[name].label for name in INFERENCE_METRICS),
)


def quantization_label(model: dict[str, Any]) -> str:
    """``4bit/g64`` for MLX, llama.cpp's type (``Q4_K - Medium``) for GGUF."""
    quant = model.get("quantization")
    if isinstance(quant, dict):
        return f"{quant.get('bits')}bit/g{quant.get('group_size')}"
    if isinstance(quant, str):
        return quant.split("B ", 1)[-1]  # llama.cpp's desc: "<arch> <size>B <type>"
    return "unquantized"


def backend_table(records: Sequence[Record]) -> str | None:
    """The same model (by name) and workload measured with more than one backend, side by side:
    the table people otherwise build by hand from mlx_lm.benchmark and llama-bench output."""
    groups: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        groups.setdefault((r["model"]["name"].split("@")[0], r["workload_label"]), []).append(r)
    body = [
        (
            model,
            label,
            r["backend"],
            quantization_label(r["model"]),
            *(_value(r, m) for m in INFERENCE_METRICS),
        )
        for (model, label), group in groups.items()
        if len({r["backend"] for r in group}) > 1
        for r in sorted(group, key=lambda r: r["backend"])
    ]
    return aligned(BACKEND_HEADERS, body) if body else None


# --------------------------------------------------------------------------- across files


def format_median(metric: Metric, samples: Sequence[float] | None) -> str:
    """The median of ``samples`` in the metric's unit, or "-" where there are none."""
    return metric.format(statistics.median(samples)) if samples else "-"


def format_p(p: float | None) -> str:
    """A p-value in two significant digits (more would be false precision), or "n/a" where
    no test was run."""
    return "n/a" if p is None else f"{p:.2g}"


def format_change(cell: Cell) -> str:
    """The relative change against the reference, e.g. ``-12.3%``; judged by process, with
    its confidence interval: ``-12.3% [-15.0..-9.5]``."""
    c = cell.comparison
    if c is None:
        return ""
    if isinstance(c, ProcessComparison):
        return f"{c.change:+.1%} [{c.low * 100:+.1f}..{c.high * 100:+.1f}]"
    return f"{c.change:+.1%}"


def file_legend(comparison: Comparison) -> list[str]:
    """``#1 (reference) results/a.json: mlx 0.26.5 / mlx-lm 0.26.4`` per file (with its
    machine id when the files were not all measured on one machine)."""
    one_machine = len({f.machine_id for f in comparison.files}) == 1
    return [
        f"#{n} {'(reference) ' if n - 1 == comparison.reference_index else ''}{f.path}: "
        f"{f.label}" + ("" if one_machine else f" [machine {f.machine_id}]")
        for n, f in enumerate(comparison.files, 1)
    ] + ([f"machine: {comparison.reference.machine_id}"] if one_machine else [])


def table_rows(comparison: Comparison) -> list[list[str]]:
    """The header and body of the side-by-side table, as strings: per row the measurement,
    metric and reference median, then per other file its median, change, p and verdict."""
    ref_no = comparison.reference_index + 1
    header = ["measurement", "metric", f"#{ref_no} (ref)"]
    for n, _ in comparison.others:
        header += [f"#{n}", f"#{n} change", f"#{n} p", f"#{n} verdict"]
    body = []
    for row in comparison.rows:
        line = [row.label, row.metric.name, format_median(row.metric, row.reference_samples)]
        for cell in row.cells:
            line += [
                format_median(row.metric, cell.samples(row.metric.name)),
                format_change(cell),
                format_p(cell.comparison.p_value) if cell.comparison else "",
                cell.status_text,
            ]
        body.append(line)
    return [header, *body]


def explanations(comparison: Comparison) -> list[str]:
    """One line per not-comparable measurement and file (why), per regression (the full
    figures and the versions on both sides) and per inconclusive metric (what it could
    resolve)."""
    lines: list[str] = []
    for row, cell in comparison.cells(Verdict.NOT_COMPARABLE):
        line = f"not comparable: #{cell.number} {row.label}: {cell.reason}"
        if line not in lines:  # one line per measurement, not per metric
            lines.append(line)
    lines += [
        f"REGRESSION #{cell.number} {row.label}: {cell.describe()}"
        for row, cell in comparison.regressions
    ]
    lines += [
        f"inconclusive #{cell.number} {row.label}: {cell.comparison.describe()}"
        for row, cell in comparison.cells(Verdict.INCONCLUSIVE)
        if cell.comparison is not None
    ]
    # A significant change where the backend's versions did not change is a control that
    # failed: the machine (other load, thermal state, run-to-run spread) moved, not a version.
    control = [
        f"#{cell.number} {row.label} {row.metric.name}"
        for verdict in (Verdict.REGRESSION, Verdict.IMPROVEMENT)
        for row, cell in comparison.cells(verdict)
        if not cell.upgraded
    ]
    if control:
        lines.append(
            f"caution: {len(control)} significant change(s) with the backend's versions unchanged "
            f"({'; '.join(control)}): no upgrade explains them, machine load or run-to-run "
            "spread can; measure on a quiet machine, and repeat, before trusting the others"
        )
    return lines


def summary_line(comparison: Comparison) -> str:
    """``verdicts: 3 improvement, 40 pass, 1 regression (alpha=0.01)``."""
    counts = ", ".join(f"{n} {status}" for status, n in comparison.counts().items())
    return f"verdicts: {counts or 'nothing to compare'} (alpha={comparison.alpha:g})"


def text_table(comparison: Comparison) -> str:
    """The whole terminal report: legend of files, the aligned table, the reasons behind
    not-comparable cells, each regression in full, and the count of verdicts."""
    out = [*file_legend(comparison), ""]
    header, *body = table_rows(comparison)
    out.append(aligned(header, body))
    notes = explanations(comparison)
    out += ["", *notes] if notes else []
    out += ["", summary_line(comparison)]
    return "\n".join(out)
