"""The cross-file comparison: line up the same measurements across results files and judge
each file against a reference file, metric by metric. A model only: rendering it (terminal,
Markdown, HTML) is ``pytest_mlxperf.render``'s job.

Typically there is one results file per backend version (a tox environment each), all measured
on one machine with the same models and workloads: "same identity, different provenance". A
measurement is the pair (test id, measurement key); two files' measurements are compared only
when the machine, the model identity (content hash included) and the workload are equal, and
then with the plugin's own rules (``verdicts.compare_metric``: beyond tolerance *and*
significant). Package versions, dates and commits are shown, never required to match.
Nothing here imports pytest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_mlxperf.identity import differences, measurement_differences
from pytest_mlxperf.metrics import METRICS, Metric
from pytest_mlxperf.options import OPTIONS_BY_NAME
from pytest_mlxperf.packages import packages_changed, versions_line
from pytest_mlxperf.results import (
    InputError,
    Record,
    ResultsFile,
    display_label,
    metric_names,
    recorded_tolerance,
    samples_of,
)
from pytest_mlxperf.verdicts import MetricComparison, Verdict, compare_metric

DEFAULT_ALPHA: float = OPTIONS_BY_NAME["alpha"].default


def identity_differences(
    reference: ResultsFile, ref_record: Record, other: ResultsFile, record: Record
) -> list[str]:
    """What keeps two measurements from being comparable (empty if nothing): machine, backend,
    model identity or workload, each as ``field: reference -> other``."""
    out = []
    if reference.machine_id != other.machine_id:
        out += differences(reference.machine, other.machine, "machine.") or [
            f"machine_id: {reference.machine_id!r} -> {other.machine_id!r}"
        ]
    return out + measurement_differences(ref_record, record)


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
        or recorded_tolerance(record, name)
        or recorded_tolerance(ref_record, name)
        or metric.default_tolerance
    )
    comparison = compare_metric(metric, before, after, tolerance=tolerance, alpha=alpha)
    old = ref_record["provenance"].get("packages", {})
    new = record["provenance"].get("packages", {})
    return Cell(
        number,
        other,
        record,
        comparison.verdict,
        comparison,
        comparison.note,
        versions_line(record["backend"], old, new),
        packages_changed(record["backend"], old, new),
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
