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

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_mlxperf.compare import MetricComparison, Verdict, compare_metric
from pytest_mlxperf.files import JSONFileError, read_json
from pytest_mlxperf.machine import PACKAGES
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
    "load_time": (int, float, type(None)),  # None: a timed callable has no model to load
    "provenance": dict,
}
# Build variants of mlx (Linux CPU, macOS Metal, CUDA) share mlx's version; shown only if not.
_MLX_VARIANTS = ("mlx-cpu", "mlx-metal", "mlx-cuda")


class InputError(ValueError):
    """The results files or the choices made about them cannot be compared as asked."""


class ResultsError(InputError):
    """A results file is missing, unreadable or not a pytest-mlxperf results file; the message
    names the file and what is wrong."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"results file {path}: {problem}")
        self.path = path
        self.problem = problem


def backend_packages(backend: str | None, *packages: Mapping[str, str]) -> tuple[str, ...]:
    """The packages whose versions matter to ``backend``'s results: its own (mlx, mlx-lm, ...),
    or every recorded one for anything else (a timed callable, or no backend given)."""
    if backend in BACKEND_PACKAGES:
        return BACKEND_PACKAGES[backend]
    return tuple(dict.fromkeys(name for p in packages for name in p))


def versions_label(packages: Mapping[str, str], backend: str | None = None) -> str:
    """``mlx 0.30.0 / mlx-lm 0.28.1``: the versions of ``backend``'s packages (all recorded
    ones when ``None``), leaving out mlx build variants that only repeat mlx's version."""
    names = backend_packages(backend, packages)
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
        order = {name: i for i, name in enumerate(PACKAGES)}
        return dict(sorted(merged.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))

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
        data = read_json(path)
    except FileNotFoundError:
        raise ResultsError(path, "does not exist") from None
    except JSONFileError as exc:
        raise ResultsError(path, str(exc)) from None
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


def metric_names(record: Record) -> list[str]:
    """The metrics a record has samples of, load time included where a model was loaded."""
    return [*record["samples"], *(["load_time"] if record["load_time"] is not None else [])]


def samples_of(record: Record, metric_name: str) -> list[float] | None:
    """A record's samples of one metric (load time: its single value), ``None`` if absent."""
    if metric_name == "load_time":
        return None if record["load_time"] is None else [float(record["load_time"])]
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

    number: int  # the file's 1-based position among the files compared
    file: ResultsFile
    record: Record | None
    verdict: Verdict | None  # None: the measurement or metric is not in this file
    comparison: MetricComparison | None = None
    reason: str = ""
    versions: str = ""  # "mlx 0.26.5 -> 0.32.4, mlx-lm 0.26.4 -> 0.32.2" where compared
    upgraded: bool = False  # whether any of the backend's packages differs from the reference

    @property
    def status(self) -> str:
        """The verdict as shown: its value, or "missing"."""
        return "missing" if self.verdict is None else self.verdict.value

    @property
    def status_text(self) -> str:
        """The status, marking a pass whose change is beyond tolerance but not significant."""
        return (
            f"{self.status} (n.s.)" if self.verdict is Verdict.PASS and self.reason else self.status
        )

    def samples(self, metric_name: str) -> list[float] | None:
        return samples_of(self.record, metric_name) if self.record else None

    def describe(self) -> str:
        """The comparison's figures (medians, change, p, sample counts) and the backend
        versions on both sides; or the reason there is no comparison."""
        if self.comparison is None:
            return self.reason
        same = "" if self.upgraded else " (unchanged: not the effect of an upgrade of this backend)"
        return f"{self.comparison.describe()}; {self.versions}{same}"


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
    reference_index: int  # 0-based position of the reference in ``files``
    rows: tuple[Row, ...]
    alpha: float

    @property
    def reference(self) -> ResultsFile:
        return self.files[self.reference_index]

    @property
    def others(self) -> list[tuple[int, ResultsFile]]:
        """(1-based number, file) of every file but the reference."""
        return [(n, f) for n, f in enumerate(self.files, 1) if n - 1 != self.reference_index]

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


def resolve_reference(paths: Sequence[Path | str], reference: str | None) -> int:
    """The 0-based position of the reference among ``paths``: ``None`` means the first; else a
    1-based number (negative counts from the end, -1 the last) or one of the paths."""
    if reference is None:
        return 0
    try:
        number = int(reference)
    except ValueError:
        wanted = Path(reference).resolve()
        for index, path in enumerate(paths):
            if Path(path).resolve() == wanted:
                return index
        raise InputError(f"--reference {reference!r} is not one of the results files") from None
    if 1 <= number <= len(paths):
        return number - 1
    if -len(paths) <= number <= -1:
        return len(paths) + number
    raise InputError(
        f"--reference {number} is out of range: give 1..{len(paths)} (or -1 for the last)"
    )


def _cell(
    metric: Metric,
    reference: ResultsFile,
    ref_record: Record | None,
    number: int,
    other: ResultsFile,
    tolerances: Mapping[str, float],
    alpha: float,
    key: tuple[str, str],
) -> Cell:
    name = metric.name
    record = other.records.get(key)
    if record is None:
        return Cell(number, other, None, None, reason="not measured in this file")
    if ref_record is None:
        return Cell(number, other, record, Verdict.NEW, reason="not in the reference file")
    differences = identity_differences(reference, ref_record, other, record)
    if differences:
        return Cell(number, other, record, Verdict.NOT_COMPARABLE, reason="; ".join(differences))
    before, after = samples_of(ref_record, name), samples_of(record, name)
    if before is None or after is None:
        side = "the reference" if before is None else "this file"
        return Cell(number, other, record, None, reason=f"{name} not recorded in {side}")
    tolerance = (
        tolerances.get(name)
        or _recorded_tolerance(record, name)
        or _recorded_tolerance(ref_record, name)
        or metric.default_tolerance
    )
    comparison = compare_metric(metric, before, after, tolerance=tolerance, alpha=alpha)
    old = ref_record["provenance"].get("packages", {})
    new = record["provenance"].get("packages", {})
    upgraded = any(old.get(p) != new.get(p) for p in backend_packages(record["backend"], old, new))
    versions = versions_line(record["backend"], old, new)
    return Cell(
        number, other, record, comparison.verdict, comparison, comparison.note, versions, upgraded
    )


def compare_files(
    files: Sequence[ResultsFile],
    reference_index: int = 0,
    tolerances: Mapping[str, float] | None = None,
    alpha: float = DEFAULT_ALPHA,
) -> Comparison:
    """Judge every measurement of every file against ``files[reference_index]``.

    Rows follow the reference file's order, then measurements only other files have. Per
    metric, ``tolerances`` (e.g. from ``options.parse_tolerances``) override the tolerance the
    plugin recorded for that test, which overrides the metric's default.
    """
    if not files:
        raise InputError("no results files to compare")
    reference = files[reference_index]
    keys = list(reference.records)
    for f in files:
        keys += [k for k in f.records if k not in keys]
    rows = []
    for key in keys:
        ref_record = reference.records.get(key)
        any_record = ref_record or next(f.records[key] for f in files if key in f.records)
        present = {name for f in files if key in f.records for name in metric_names(f.records[key])}
        for metric in (m for m in METRICS.values() if m.name in present):
            cells = tuple(
                _cell(metric, reference, ref_record, n, f, tolerances or {}, alpha, key)
                for n, f in enumerate(files, 1)
                if n - 1 != reference_index
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
    return Comparison(tuple(files), reference_index, tuple(rows), alpha)


# --------------------------------------------------------------------------- text rendering


def format_value(metric: Metric, value: float) -> str:
    """A value in the metric's unit; memory below 1 GB in MB, so small models' differences
    stay visible (``Metric.format`` shows GB with three decimals)."""
    if metric.unit == "bytes" and value < 1e9:
        return f"{value / 1e6:.1f} MB"
    return metric.format(value)


def format_median(metric: Metric, samples: Sequence[float] | None) -> str:
    """The median of ``samples`` in the metric's unit, or "-" where there are none."""
    return format_value(metric, statistics.median(samples)) if samples else "-"


def format_p(p: float | None) -> str:
    """A p-value in two significant digits (more would be false precision), or "n/a" where
    no test was run."""
    return "n/a" if p is None else f"{p:.2g}"


def format_change(cell: Cell) -> str:
    """The relative change of the median against the reference, e.g. ``-12.3%``."""
    return "" if cell.comparison is None else f"{cell.comparison.change:+.1%}"


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


def _aligned(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def explanations(comparison: Comparison) -> list[str]:
    """One line per not-comparable measurement and file (why), and per regression (the full
    figures and the versions on both sides)."""
    lines: list[str] = []
    for row, cell in comparison.cells(Verdict.NOT_COMPARABLE):
        line = f"not comparable: #{cell.number} {row.label}: {cell.reason}"
        if line not in lines:  # one line per measurement, not per metric
            lines.append(line)
    lines += [
        f"REGRESSION #{cell.number} {row.label}: {cell.describe()}"
        for row, cell in comparison.regressions
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
    out += _aligned(table_rows(comparison))
    notes = explanations(comparison)
    out += ["", *notes] if notes else []
    out += ["", summary_line(comparison)]
    return "\n".join(out)
