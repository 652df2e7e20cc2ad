"""Results: one judged measurement (``PerfResult``), its JSON record, and the results document
that ``pytest --mlxperf --mlxperf-json PATH`` writes and ``mlxperf compare`` / ``report`` /
``export`` read.

This module owns the document's format: it writes it, reads it back and validates it, with
errors that name the file. Records are plain dicts (``Record``) so that results measured in
other processes (xdist workers) and results read from files render the same way. Nothing here
imports pytest.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_mlxperf import __version__
from pytest_mlxperf.host.packages import sorted_packages, versions, versions_label, versions_line
from pytest_mlxperf.interop.pytest_benchmark import is_pytest_benchmark_document
from pytest_mlxperf.interop.pytest_benchmark import results_document as pytest_benchmark_results
from pytest_mlxperf.measuring.base import measurement_key
from pytest_mlxperf.measuring.measure import Measurement
from pytest_mlxperf.stats.metrics import METRICS, sample_problem
from pytest_mlxperf.stats.verdicts import MetricComparison, Verdict
from pytest_mlxperf.store.files import JSONFileError, atomic_write, read_json

# One measurement's record in a results file (``PerfResult.to_json()``).
Record = dict[str, Any]
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


@dataclass
class PerfResult:
    """One measurement of one test, judged against its baseline.

    Every metric's median is an attribute (``result.prompt_tps``, ``result.generation_tps``,
    ``result.duration``, ``result.iterations_per_s`` ...); ``samples`` has every repetition.
    """

    nodeid: str
    key: str
    measurement: Measurement
    load_time: float | None
    verdict: Verdict
    comparisons: list[MetricComparison]
    baseline_path: Path
    provenance: dict[str, Any]
    baseline_provenance: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    saved: bool = False
    # the tolerance this test applies to each gated metric (marker > CLI > env > ini > default)
    tolerances: dict[str, float] = field(default_factory=dict)
    # the machine speed canary of the session (``canary.run_canary``): seconds per trial
    canary: dict[str, list[float]] | None = None

    @property
    def samples(self) -> dict[str, list[float]]:
        return self.measurement.samples

    @property
    def all_samples(self) -> dict[str, list[float]]:
        """The repetitions' samples plus the model's load time (one sample), where there is one."""
        extra = {} if self.load_time is None else {"load_time": [self.load_time]}
        return {**self.measurement.samples, **extra}

    def median(self, metric_name: str) -> float:
        """The median of one metric; a clear error if this measurement has no such metric."""
        samples = self.all_samples.get(metric_name)
        if samples is None:
            raise AttributeError(
                f"measurement {self.key!r} has no {metric_name!r}; it measured "
                f"{', '.join(self.all_samples)}"
            )
        return statistics.median(samples)

    def __getattr__(self, name: str) -> float:
        # only reached for names that are not regular attributes: metric medians
        if name in METRICS:
            return self.median(name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def regressions(self) -> list[MetricComparison]:
        return [c for c in self.comparisons if c.verdict is Verdict.REGRESSION]

    def report(self) -> str:
        """The full text of the verdict: what a failing test shows."""
        m = self.measurement
        head = (
            f"mlxperf {self.verdict.value}: {self.nodeid} "
            f"[{m.backend} {m.model['name']} {m.workload.label}]"
        )
        lines = [head]
        lines += [
            "  " + c.describe() for c in self.comparisons if c.verdict is not Verdict.NOT_GATED
        ]
        lines += ["  " + n for n in self.notes]
        lines.append(f"  baseline file: {self.baseline_path}")
        if self.baseline_provenance is not None:
            before = self.baseline_provenance
            lines.append(
                f"  baseline recorded {before.get('date', '?')} at commit "
                f"{(before.get('git_commit') or '?')[:12]}"
            )
            lines.append(
                "  versions: "
                + versions_line(m.backend, versions(before), versions(self.provenance))
            )
        return "\n".join(lines)

    def to_json(self) -> Record:
        m = self.measurement
        return {
            "test": self.nodeid,
            "key": self.key,
            "backend": m.backend,
            "model": m.model,
            "workload": m.workload.identity(),
            "workload_label": m.workload.label,
            "warmup": m.warmup,
            "output_fingerprint": m.fingerprint,
            "wall_time": m.wall_time,
            "load_time": self.load_time,
            "samples": m.samples,
            "medians": {name: self.median(name) for name in self.all_samples},
            "raw": [dataclasses.asdict(r) for r in m.raw],
            "verdict": self.verdict.value,
            "comparisons": [c.to_json() for c in self.comparisons],
            "notes": self.notes,
            "message": self.report(),
            "baseline_file": str(self.baseline_path),
            "baseline_provenance": self.baseline_provenance,
            "provenance": self.provenance,
            "saved": self.saved,
            "tolerances": self.tolerances,
            "canary": self.canary,
        }


def results_document(
    records: list[Record], machine: dict[str, Any], machine_id: str
) -> dict[str, Any]:
    """The results document: the writing version, the machine, and every record."""
    return {
        "pytest_mlxperf": __version__,
        "machine": machine,
        "machine_id": machine_id,
        "results": list(records),
    }


def write_json(path: Path, document: Any) -> None:
    """Write a JSON document atomically, keys sorted (readable diffs)."""
    atomic_write(path, json.dumps(document, indent=2, sort_keys=True) + "\n")


class InputError(ValueError):
    """The results files or the choices made about them cannot be compared as asked."""


class ResultsError(InputError):
    """A results file is missing, unreadable or not a pytest-mlxperf results file; the message
    names the file and what is wrong."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"results file {path}: {problem}")
        self.path = path
        self.problem = problem


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
            merged.update(versions(record["provenance"]))
        return sorted_packages(merged)

    @property
    def label(self) -> str:
        """The file's versions, e.g. ``mlx 0.30.0 / mlx-lm 0.28.1 / llama-cpp-python 0.3.16``."""
        return versions_label(self.packages)


def _check_record(path: Path, index: int, record: Any) -> Record:
    where = f"results[{index}]"
    if not isinstance(record, dict):
        raise ResultsError(path, f"{where} is not a JSON object")
    for name, kind in RECORD_FIELDS.items():
        if not isinstance(record.get(name), kind) or isinstance(record.get(name), bool):
            raise ResultsError(path, f"{where}: field {name!r} is missing or of the wrong type")
    problem = sample_problem(record["samples"], known_only=True)
    if problem:
        raise ResultsError(path, f"{where} ({record['test']}): {problem}")
    return record


def load_results(path: Path | str) -> ResultsFile:
    """Read and validate one results file (``ResultsError`` naming the file otherwise): a
    pytest-mlxperf results file, or a pytest-benchmark JSON file (its benchmarks become
    ``duration`` records; see ``pytest_benchmark_bridge``)."""
    path = Path(path)
    try:
        data = read_json(path)
    except FileNotFoundError:
        raise ResultsError(path, "does not exist") from None
    except JSONFileError as exc:
        raise ResultsError(path, str(exc)) from None
    if is_pytest_benchmark_document(data):
        try:
            data = pytest_benchmark_results(data)
        except ValueError as exc:
            raise ResultsError(path, f"pytest-benchmark file: {exc}") from None
    if not isinstance(data, dict) or any(
        not isinstance(data.get(name), kind) for name, kind in DOCUMENT_FIELDS.items()
    ):
        found = ", ".join(sorted(data)) if isinstance(data, dict) else type(data).__name__
        raise ResultsError(
            path,
            "not a pytest-mlxperf results file (expected the fields "
            f"{', '.join(DOCUMENT_FIELDS)}; found {found or 'nothing'}); "
            "write one with: pytest --mlxperf --mlxperf-json PATH (pytest-benchmark's "
            "--benchmark-json files are read too)",
        )
    records: dict[tuple[str, str], Record] = {}
    for index, raw in enumerate(data["results"]):
        record = _check_record(path, index, raw)
        key = (record["test"], record["key"])
        if key in records:
            raise ResultsError(path, f"measurement {record['key']!r} of {key[0]} appears twice")
        records[key] = record
    return ResultsFile(path, data["machine"], data["machine_id"], records)


def metric_names(record: Record) -> list[str]:
    """The metrics a record has samples of, load time included where a model was loaded."""
    return [*record["samples"], *(["load_time"] if record["load_time"] is not None else [])]


def samples_of(record: Record, metric_name: str) -> list[float] | None:
    """A record's samples of one metric (load time: its single value), ``None`` if absent."""
    if metric_name == "load_time":
        return None if record["load_time"] is None else [float(record["load_time"])]
    return record["samples"].get(metric_name)


def recorded_tolerance(record: Record | None, metric_name: str) -> float | None:
    """The tolerance the plugin applied to this test and metric (marker included), as recorded
    in the results file (older files carry it only where the run had a baseline)."""
    tolerances = (record or {}).get("tolerances")
    tolerance = tolerances.get(metric_name) if isinstance(tolerances, dict) else None
    if isinstance(tolerance, (int, float)) and tolerance > 0:
        return float(tolerance)
    for c in (record or {}).get("comparisons", ()):
        if isinstance(c, dict) and c.get("metric") == metric_name:
            tolerance = c.get("tolerance")
            if isinstance(tolerance, (int, float)) and tolerance > 0:
                return float(tolerance)
    return None


def display_label(record: Record) -> str:
    """``test_name[param] pp128+tg64``: the test without its module, and the workload label
    (or the measurement's own name when the test gave it one)."""
    short = record["test"].split("::", 1)[-1]
    default_key = measurement_key(
        record["backend"], record["model"].get("name"), record["workload_label"]
    )
    return f"{short} {record['workload_label'] if record['key'] == default_key else record['key']}"
