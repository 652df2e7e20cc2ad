"""The cross-file comparison: line up the same measurements across results files and judge
each file against a reference file, metric by metric. A model only: rendering it (terminal,
Markdown, HTML) is ``pytest_mlxperf.render``'s job.

Typically there is one results file per backend version (a tox environment each), all measured
on one machine with the same models and workloads: "same identity, different provenance". A
measurement is the pair (test id, measurement key); two files' measurements are compared only
when the machine, the model identity (content hash included) and the workload are equal, and
then with the plugin's own rules (``verdicts.compare_metric``: beyond tolerance *and*
significant). Package versions, dates and commits are shown, never required to match.

A side of the comparison is a ``ResultsGroup``: one file, or several files pooled (separate
processes of one environment: repeated tox runs, the rounds of ``mlxperf ab``). Where both
sides have at least two processes of a measurement, it is judged with the process as the unit
(``process_stats.compare_processes``, paired by round when the sides have equal counts);
with one process on a side, by the repetitions (``verdicts.compare_metric``), which on a shared
machine overstates the evidence, and the cell says so. Nothing here imports pytest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from pytest_mlxperf.host.packages import (
    packages_changed,
    sorted_packages,
    versions,
    versions_label,
    versions_line,
)
from pytest_mlxperf.settings.options import OPTIONS_BY_NAME
from pytest_mlxperf.stats.identity import differences, measurement_differences
from pytest_mlxperf.stats.metrics import METRICS, Metric, tolerance_of
from pytest_mlxperf.stats.process_stats import MIN_PROCESSES, ProcessComparison, compare_processes
from pytest_mlxperf.stats.verdicts import MetricComparison, Verdict, compare_metric
from pytest_mlxperf.store.results import (
    InputError,
    Record,
    ResultsFile,
    display_label,
    metric_names,
    recorded_tolerance,
    samples_of,
)

DEFAULT_ALPHA: float = OPTIONS_BY_NAME["alpha"].default
SINGLE_PROCESS_NOTE = (
    "one process on a side: repetitions counted as independent, which overstates the evidence "
    "on a shared machine; pool several runs per side (mlxperf ab, or compare --pool)"
)


@dataclass(frozen=True)
class ResultsGroup:
    """One side of a comparison: a results file, or several pooled (one process each, in
    round order: two sides of equal size are paired file by file). ``records`` has one record
    per measurement whose samples are every process's, concatenated; ``processes`` keeps them
    apart."""

    name: str
    files: tuple[ResultsFile, ...]

    def __post_init__(self) -> None:
        if not self.files:
            raise InputError(f"{self.name}: no results files")
        machines = {f.machine_id for f in self.files}
        if len(machines) > 1:
            raise InputError(
                f"{self.name}: files measured on different machines ({', '.join(sorted(machines))})"
                " cannot be pooled"
            )

    @classmethod
    def of(cls, results: ResultsFile) -> ResultsGroup:
        return cls(str(results.path), (results,))

    @property
    def path(self) -> str:
        """What legends show: the file, or the group's name and its process count."""
        if len(self.files) == 1:
            return str(self.files[0].path)
        folders = {f.path.parent for f in self.files}
        where = (
            f"in {folders.pop()}"
            if len(folders) == 1
            else ": " + ", ".join(str(f.path) for f in self.files)
        )
        return f"{self.name} ({len(self.files)} processes {where})"

    @property
    def machine(self) -> dict[str, object]:
        return self.files[0].machine

    @property
    def machine_id(self) -> str:
        return self.files[0].machine_id

    @property
    def packages(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for f in self.files:
            merged.update(f.packages)
        return sorted_packages(merged)

    @property
    def label(self) -> str:
        return versions_label(self.packages)

    @cached_property
    def records(self) -> dict[tuple[str, str], Record]:
        pooled: dict[tuple[str, str], Record] = {}
        for f in self.files:
            for key, record in f.records.items():
                if key not in pooled:
                    pooled[key] = {**record, "samples": {}, "processes": 0}
                merged = pooled[key]
                merged["processes"] += 1
                for name, values in record["samples"].items():
                    merged["samples"].setdefault(name, []).extend(values)
        return pooled

    def processes(self, key: tuple[str, str], metric_name: str) -> list[list[float]]:
        """Each process's samples of one metric of one measurement, in file order."""
        out = []
        for f in self.files:
            record = f.records.get(key)
            samples = samples_of(record, metric_name) if record else None
            if samples:
                out.append(list(samples))
        return out


def group_files(files: Sequence[ResultsFile]) -> list[ResultsGroup]:
    """Pool files measured on the same machine with the same package versions, in the order
    their first file was given (``mlxperf compare --pool``)."""
    groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[ResultsFile]] = {}
    for f in files:
        groups.setdefault((f.machine_id, tuple(f.packages.items())), []).append(f)
    return [
        ResultsGroup(members[0].label if len(members) > 1 else str(members[0].path), tuple(members))
        for members in groups.values()
    ]


def identity_differences(
    reference: ResultsGroup, ref_record: Record, other: ResultsGroup, record: Record
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

    number: int  # the side's 1-based position among the sides compared
    file: ResultsGroup
    record: Record | None
    verdict: Verdict | None  # None: the measurement or metric is not in this file
    comparison: MetricComparison | ProcessComparison | None = None
    reason: str = ""
    versions: str = ""  # "mlx 0.26.5 -> 0.32.4, mlx-lm 0.26.4 -> 0.32.2" where compared
    upgraded: bool = False  # whether any of the backend's packages differs from the reference

    @property
    def status(self) -> str:
        """The verdict as shown: its value, or "missing"."""
        return "missing" if self.verdict is None else self.verdict.value

    @property
    def status_text(self) -> str:
        """The status, marking a pass that was not shown to be within tolerance: beyond it but
        not significant, or (process-level, more rounds to come) not decided yet."""
        undecided = isinstance(self.comparison, ProcessComparison) and not self.comparison.decided
        flagged = self.verdict is Verdict.PASS and (self.reason or undecided)
        return f"{self.status} (n.s.)" if flagged else self.status

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

    files: tuple[ResultsGroup, ...]
    reference_index: int  # 0-based position of the reference in ``files``
    rows: tuple[Row, ...]
    alpha: float

    @property
    def reference(self) -> ResultsGroup:
        return self.files[self.reference_index]

    @property
    def undecided(self) -> list[tuple[Row, Cell]]:
        """Gated cells judged by process but not decided yet (more rounds would tell)."""
        return [
            (row, cell)
            for row in self.rows
            for cell in row.cells
            if isinstance(cell.comparison, ProcessComparison) and not cell.comparison.decided
        ]

    @property
    def others(self) -> list[tuple[int, ResultsGroup]]:
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


@dataclass(frozen=True)
class _Judging:
    """What every cell of one comparison is judged with."""

    tolerances: Mapping[str, float]
    alpha: float
    final: bool


def _cell(
    metric: Metric,
    reference: ResultsGroup,
    ref_record: Record | None,
    number: int,
    other: ResultsGroup,
    judging: _Judging,
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
    tolerance = tolerance_of(
        name,
        judging.tolerances.get(name),
        recorded_tolerance(record, name),
        recorded_tolerance(ref_record, name),
    )
    ref_runs, runs = reference.processes(key, name), other.processes(key, name)
    comparison: MetricComparison | ProcessComparison
    # log ratios need positive values on a relative scale: an absolute metric (memory growth,
    # near zero) is judged on its samples with its difference tolerance
    by_process = not metric.absolute and min(before + after) > 0
    if min(len(ref_runs), len(runs)) >= MIN_PROCESSES and by_process:
        comparison = compare_processes(
            metric,
            ref_runs,
            runs,
            tolerance=tolerance,
            alpha=judging.alpha,
            paired=len(ref_runs) == len(runs),
            final=judging.final,
        )
        reason = comparison.note
    else:
        comparison = compare_metric(metric, before, after, tolerance=tolerance, alpha=judging.alpha)
        reason = comparison.note
        if max(len(ref_runs), len(runs)) >= MIN_PROCESSES and metric.gated and by_process:
            reason = "; ".join(filter(None, [reason, SINGLE_PROCESS_NOTE]))
    old = versions(ref_record["provenance"])
    new = versions(record["provenance"])
    return Cell(
        number,
        other,
        record,
        comparison.verdict,
        comparison,
        reason,
        versions_line(record["backend"], old, new),
        packages_changed(record["backend"], old, new),
    )


def compare_files(
    files: Sequence[ResultsFile],
    reference_index: int = 0,
    tolerances: Mapping[str, float] | None = None,
    alpha: float = DEFAULT_ALPHA,
    *,
    pool: bool = False,
) -> Comparison:
    """Judge every measurement of every file against ``files[reference_index]``; with
    ``pool``, files of the same machine and package versions are first pooled into one side
    (the reference side is the one holding ``files[reference_index]``)."""
    if not files:
        raise InputError("no results files to compare")
    if not pool:
        groups = [ResultsGroup.of(f) for f in files]
        return compare_groups(groups, reference_index, tolerances, alpha)
    groups = group_files(files)
    wanted = files[reference_index]
    index = next(i for i, g in enumerate(groups) if any(f is wanted for f in g.files))
    return compare_groups(groups, index, tolerances, alpha)


def compare_groups(
    groups: Sequence[ResultsGroup],
    reference_index: int = 0,
    tolerances: Mapping[str, float] | None = None,
    alpha: float = DEFAULT_ALPHA,
    *,
    final: bool = True,
) -> Comparison:
    """Judge every measurement of every side against ``groups[reference_index]``.

    Rows follow the reference's order, then measurements only other sides have. Per metric,
    ``tolerances`` (e.g. from ``options.parse_tolerances``) override the tolerance the plugin
    recorded for that test, which overrides the metric's default. ``final``: no more rounds
    will come, so a process-level comparison still undecided is *inconclusive*.
    """
    if not groups:
        raise InputError("no results files to compare")
    judging = _Judging(tolerances or {}, alpha, final)
    reference = groups[reference_index]
    keys = list(reference.records)
    for g in groups:
        keys += [k for k in g.records if k not in keys]
    rows = []
    for key in keys:
        ref_record = reference.records.get(key)
        any_record = ref_record or next(g.records[key] for g in groups if key in g.records)
        present = {n for g in groups if key in g.records for n in metric_names(g.records[key])}
        for metric in (m for m in METRICS.values() if m.name in present):
            cells = tuple(
                _cell(metric, reference, ref_record, n, g, judging, key)
                for n, g in enumerate(groups, 1)
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
    return Comparison(tuple(groups), reference_index, tuple(rows), alpha)
