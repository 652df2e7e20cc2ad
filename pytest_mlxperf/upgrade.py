"""The upgrade gate: line up the same measurements across results files and judge each file
against a reference file, metric by metric.

A results file is what ``pytest --mlxperf --mlxperf-json PATH`` writes
(``report.results_document``).
Typically there is one per backend version (a tox environment each), all measured on one machine
with the same models and workloads: "same identity, different provenance". A measurement is the
pair (test id, measurement key); two files' measurements are compared only when the machine,
the model identity (content hash included) and the workload are equal, and then with the
plugin's own rules (``compare.compare_metric``: beyond tolerance *and* significant) and default
tolerances. Package versions, dates and commits are shown, never required to match.
Nothing here imports pytest.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_mlxperf.compare import MetricComparison, Verdict, compare_metric
from pytest_mlxperf.metrics import METRICS, Metric
from pytest_mlxperf.options import OPTIONS_BY_NAME
from pytest_mlxperf.session import BACKEND_PACKAGES, versions_line

Record = dict[str, Any]
DEFAULT_ALPHA: float = OPTIONS_BY_NAME["alpha"].default
DOCUMENT_FIELDS = {"pytest_mlxperf": str, "machine": dict, "machine_id": str, "results": list}
RECORD_FIELDS = {
    "test": str,
    "key": str,
    "backend": str,
    "model": dict,
    "workload": dict,
    "workload_label": str,
    "samples": dict,
    "load_time": (int, float),
    "provenance": dict,
}
# Build variants of mlx (Linux CPU, macOS Metal, CUDA) share mlx's version; shown only if not.
_MLX_VARIANTS = ("mlx-cpu", "mlx-metal", "mlx-cuda")


class ResultsError(ValueError):
    """A results file is missing, unreadable or not a pytest-mlxperf results file; the message
    names the file and what is wrong."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"results file {path}: {problem}")
        self.path = path
        self.problem = problem


def versions_label(packages: Mapping[str, str], backend: str | None = None) -> str:
    """``mlx 0.30.0 / mlx-lm 0.28.1``: the versions of ``backend``'s packages (all backends'
    when ``None``), leaving out mlx build variants that only repeat mlx's version."""
    names = BACKEND_PACKAGES.get(backend, ()) if backend else tuple(packages)
    shown = [
        f"{name} {packages[name]}"
        for name in names
        if name in packages
        and not (name in _MLX_VARIANTS and packages[name] == packages.get("mlx"))
    ]
    return " / ".join(shown) or "versions unknown"


@dataclass(frozen=True)
class ResultsFile:
    """One results file, validated: its machine and its records keyed by (test, key)."""

    path: Path
    machine: dict[str, Any]
    machine_id: str
    records: dict[tuple[str, str], Record]

    @property
    def packages(self) -> dict[str, str]:
        """The backend package versions the file was measured with (all its records')."""
        merged: dict[str, str] = {}
        for record in self.records.values():
            merged.update(record["provenance"].get("packages", {}))
        return dict(sorted(merged.items()))

    @property
    def label(self) -> str:
        """The file's versions, e.g. ``mlx 0.30.0 / mlx-lm 0.28.1 / llama-cpp-python 0.3.16``."""
        return versions_label(self.packages)


def _check_samples(path: Path, where: str, samples: dict[str, Any]) -> None:
    for name, values in samples.items():
        if name not in METRICS:
            raise ResultsError(path, f"{where}: unknown metric {name!r}")
        if not isinstance(values, list) or not values:
            raise ResultsError(path, f"{where}: samples of {name!r} must be a non-empty list")
        for value in values:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ResultsError(path, f"{where}: sample {value!r} of {name!r} is not a number")
            if not math.isfinite(value) or value < 0:
                raise ResultsError(
                    path, f"{where}: sample {value!r} of {name!r} is not a finite number >= 0"
                )


def _check_record(path: Path, index: int, record: Any) -> Record:
    where = f"results[{index}]"
    if not isinstance(record, dict):
        raise ResultsError(path, f"{where} is not a JSON object")
    for field, kind in RECORD_FIELDS.items():
        if not isinstance(record.get(field), kind) or isinstance(record.get(field), bool):
            raise ResultsError(path, f"{where}: field {field!r} is missing or of the wrong type")
    _check_samples(path, f"{where} ({record['test']})", record["samples"])
    return record


def load_results(path: Path | str) -> ResultsFile:
    """Read and validate one results file (``ResultsError`` naming the file otherwise)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultsError(path, "does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(path, f"cannot be read ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(
            path, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise ResultsError(path, "invalid JSON: nested too deeply") from None
    if not isinstance(data, dict) or any(
        not isinstance(data.get(field), kind) for field, kind in DOCUMENT_FIELDS.items()
    ):
        found = ", ".join(sorted(data)) if isinstance(data, dict) else type(data).__name__
        raise ResultsError(
            path,
            "not a pytest-mlxperf results file (expected the fields "
            f"{', '.join(DOCUMENT_FIELDS)}; found {found or 'nothing'}); "
            "write one with: pytest --mlxperf --mlxperf-json PATH",
        )
    records: dict[tuple[str, str], Record] = {}
    for index, raw in enumerate(data["results"]):
        record = _check_record(path, index, raw)
        key = (record["test"], record["key"])
        if key in records:
            raise ResultsError(path, f"measurement {record['key']!r} of {key[0]} appears twice")
        records[key] = record
    return ResultsFile(path, data["machine"], data["machine_id"], records)


def identity_differences(
    reference: ResultsFile, ref_record: Record, other: ResultsFile, record: Record
) -> list[str]:
    """What keeps two measurements from being comparable (empty if nothing): machine, backend,
    model identity or workload, each as ``field: reference -> other``."""

    def diff(prefix: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
        return [
            f"{prefix}{k}: {before.get(k)!r} -> {after.get(k)!r}"
            for k in sorted(set(before) | set(after))
            if before.get(k) != after.get(k)
        ]

    out = []
    if reference.machine_id != other.machine_id:
        out += diff("machine.", reference.machine, other.machine) or [
            f"machine_id: {reference.machine_id!r} -> {other.machine_id!r}"
        ]
    if ref_record["backend"] != record["backend"]:
        out.append(f"backend: {ref_record['backend']!r} -> {record['backend']!r}")
    out += diff("model.", ref_record["model"], record["model"])
    out += diff("workload.", ref_record["workload"], record["workload"])
    return out


def samples_of(record: Record, metric_name: str) -> list[float] | None:
    """A record's samples of one metric (load time: its single value), ``None`` if absent."""
    if metric_name == "load_time":
        return [float(record["load_time"])]
    return record["samples"].get(metric_name)


def _recorded_tolerance(record: Record | None, metric_name: str) -> float | None:
    """The tolerance the plugin applied to this test and metric (marker included), as recorded
    in the results file when that run was compared with a baseline."""
    for c in (record or {}).get("comparisons", ()):
        if isinstance(c, dict) and c.get("metric") == metric_name:
            tolerance = c.get("tolerance")
            if isinstance(tolerance, (int, float)) and tolerance > 0:
                return float(tolerance)
    return None


@dataclass(frozen=True)
class Cell:
    """One non-reference file's side of a row: its record, and either a comparison with the
    reference or the reason there is none."""

    file: ResultsFile
    record: Record | None
    verdict: Verdict | None  # None: the measurement or metric is not in this file
    comparison: MetricComparison | None = None
    reason: str = ""
    versions: str = ""  # "mlx 0.26.5 -> 0.32.4, mlx-lm 0.26.4 -> 0.32.2" where compared

    @property
    def status(self) -> str:
        """The verdict as shown: its value, or "missing"."""
        return "missing" if self.verdict is None else self.verdict.value

    def describe(self) -> str:
        """The comparison's figures (medians, change, p, sample counts) and the backend
        versions on both sides; or the reason there is no comparison."""
        if self.comparison is None:
            return self.reason
        return f"{self.comparison.describe()}; {self.versions}"


@dataclass(frozen=True)
class Row:
    """One measurement and metric across all files: the reference side and one cell per other
    file, in the order the files were given."""

    test: str
    key: str
    label: str
    backend: str
    metric: Metric
    reference: Record | None
    cells: tuple[Cell, ...]

    @property
    def reference_samples(self) -> list[float] | None:
        return samples_of(self.reference, self.metric.name) if self.reference else None


@dataclass(frozen=True)
class Comparison:
    """Every measurement of every file judged against the reference file."""

    files: tuple[ResultsFile, ...]
    reference: ResultsFile
    rows: tuple[Row, ...]
    alpha: float

    @property
    def others(self) -> tuple[ResultsFile, ...]:
        return tuple(f for f in self.files if f is not self.reference)

    def cells(self, verdict: Verdict) -> list[tuple[Row, Cell]]:
        """Every (row, cell) with this verdict."""
        return [(row, cell) for row in self.rows for cell in row.cells if cell.verdict is verdict]

    @property
    def regressions(self) -> list[tuple[Row, Cell]]:
        return self.cells(Verdict.REGRESSION)

    def counts(self) -> dict[str, int]:
        """How many cells have each status, in a stable order."""
        counts: dict[str, int] = {}
        for row in self.rows:
            for cell in row.cells:
                counts[cell.status] = counts.get(cell.status, 0) + 1
        return dict(sorted(counts.items()))


def display_label(record: Record) -> str:
    """``test_name[param] pp128+tg64``: the test without its module, and the workload label
    (or the measurement's own name when the test gave it one)."""
    short = record["test"].split("::", 1)[-1]
    default_key = f"{record['backend']}:{record['model'].get('name')}:{record['workload_label']}"
    return f"{short} {record['workload_label'] if record['key'] == default_key else record['key']}"


def resolve_reference(files: Sequence[ResultsFile], reference: str | None) -> ResultsFile:
    """The reference among ``files``: ``None`` (the first), a 1-based index (negative counts
    from the end), or one of the files' paths."""
    if reference is None:
        return files[0]
    try:
        index = int(reference)
    except ValueError:
        wanted = Path(reference).resolve()
        for f in files:
            if f.path.resolve() == wanted:
                return f
        raise ValueError(f"--reference {reference!r} is not one of the results files") from None
    if not (1 <= index <= len(files) or -len(files) <= index <= -1):
        raise ValueError(
            f"--reference {index} is out of range: give 1..{len(files)} (or -1 for the last)"
        )
    return files[index - 1 if index > 0 else index]


def _cell(
    metric: Metric,
    reference: ResultsFile,
    ref_record: Record | None,
    other: ResultsFile,
    record: Record | None,
    tolerances: Mapping[str, float],
    alpha: float,
) -> Cell:
    name = metric.name
    if record is None:
        return Cell(other, None, None, reason="not measured in this file")
    if ref_record is None:
        return Cell(other, record, Verdict.NEW, reason="not in the reference file")
    differences = identity_differences(reference, ref_record, other, record)
    if differences:
        return Cell(other, record, Verdict.NOT_COMPARABLE, reason="; ".join(differences))
    before, after = samples_of(ref_record, name), samples_of(record, name)
    if before is None or after is None:
        return Cell(other, record, None, reason=f"{name} not recorded")
    tolerance = (
        tolerances.get(name)
        or _recorded_tolerance(record, name)
        or _recorded_tolerance(ref_record, name)
        or metric.default_tolerance
    )
    comparison = compare_metric(metric, before, after, tolerance=tolerance, alpha=alpha)
    versions = versions_line(
        record["backend"],
        ref_record["provenance"].get("packages", {}),
        record["provenance"].get("packages", {}),
    )
    return Cell(other, record, comparison.verdict, comparison, comparison.note, versions)


def compare_files(
    files: Sequence[ResultsFile],
    reference: ResultsFile | None = None,
    tolerances: Mapping[str, float] | None = None,
    alpha: float = DEFAULT_ALPHA,
) -> Comparison:
    """Judge every measurement of every file against ``reference`` (default: the first file).

    Rows follow the reference file's order, then measurements only other files have. Per
    metric, ``tolerances`` (e.g. from ``options.parse_tolerances``) override the tolerance the
    plugin recorded for that test, which overrides the metric's default.
    """
    if not files:
        raise ValueError("no results files to compare")
    reference = reference or files[0]
    tolerances = tolerances or {}
    keys = list(reference.records)
    for f in files:
        keys += [k for k in f.records if k not in keys]
    rows = []
    for key in keys:
        ref_record = reference.records.get(key)
        any_record = ref_record or next(f.records[key] for f in files if key in f.records)
        present = {
            name
            for f in files
            if key in f.records
            for name in (*f.records[key]["samples"], "load_time")
        }
        for metric in (m for m in METRICS.values() if m.name in present):
            cells = tuple(
                _cell(metric, reference, ref_record, f, f.records.get(key), tolerances, alpha)
                for f in files
                if f is not reference
            )
            rows.append(
                Row(
                    test=key[0],
                    key=key[1],
                    label=display_label(any_record),
                    backend=any_record["backend"],
                    metric=metric,
                    reference=ref_record,
                    cells=cells,
                )
            )
    return Comparison(tuple(files), reference, tuple(rows), alpha)


# --------------------------------------------------------------------------- text rendering


def format_p(p: float | None) -> str:
    """A p-value in three significant digits, or "n/a" where no test was run."""
    return "n/a" if p is None else f"{p:.3g}"


def format_change(cell: Cell) -> str:
    return "" if cell.comparison is None else f"{cell.comparison.change:+.1%}"


def format_median(metric: Metric, samples: Sequence[float] | None) -> str:
    """The median of ``samples`` in the metric's unit, or "-" where there are none."""
    return metric.format(statistics.median(samples)) if samples else "-"


def _aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def file_legend(comparison: Comparison) -> list[str]:
    """``#1 (reference) results/a.json: mlx 0.26.5 / mlx-lm 0.26.4`` per file."""
    return [
        f"#{i} {'(reference) ' if f is comparison.reference else ''}{f.path}: {f.label}"
        for i, f in enumerate(comparison.files, 1)
    ]


def text_table(comparison: Comparison) -> str:
    """The side-by-side table: per measurement and metric the reference median, then for each
    other file its median, change, p-value and verdict; followed by the reasons behind
    not-comparable cells and the full description of each regression."""
    number = {id(f): i for i, f in enumerate(comparison.files, 1)}
    ref_no = number[id(comparison.reference)]
    header = ["measurement", "metric", f"#{ref_no} (ref)"]
    for f in comparison.others:
        n = number[id(f)]
        header += [f"#{n}", f"#{n} change", f"#{n} p", f"#{n} verdict"]
    body = []
    for row in comparison.rows:
        line = [row.label, row.metric.name, format_median(row.metric, row.reference_samples)]
        for cell in row.cells:
            line += [
                format_median(row.metric, samples_of(cell.record, row.metric.name))
                if cell.record
                else "-",
                format_change(cell),
                format_p(cell.comparison.p_value) if cell.comparison else "",
                cell.status,
            ]
        body.append(line)
    out = [*file_legend(comparison), f"machine: {comparison.reference.machine_id}", ""]
    out += _aligned([header, *body])
    out += explanations(comparison)
    counts = ", ".join(f"{n} {status}" for status, n in comparison.counts().items())
    out += ["", f"verdicts: {counts or 'nothing to compare'} (alpha={comparison.alpha:g})"]
    return "\n".join(out)


def explanations(comparison: Comparison) -> list[str]:
    """One line per not-comparable measurement and file (why), and per regression (the full
    figures and the versions on both sides)."""
    number = {id(f): i for i, f in enumerate(comparison.files, 1)}
    lines: list[str] = []
    seen: set[tuple[str, str, int]] = set()
    for row, cell in comparison.cells(Verdict.NOT_COMPARABLE):
        tag = (row.test, row.key, number[id(cell.file)])
        if tag not in seen:
            seen.add(tag)
            lines.append(f"not comparable: #{tag[2]} {row.label}: {cell.reason}")
    for row, cell in comparison.regressions:
        lines.append(f"REGRESSION #{number[id(cell.file)]} {row.label}: {cell.describe()}")
    return ["", *lines] if lines else []
