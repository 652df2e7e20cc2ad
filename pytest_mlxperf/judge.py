"""Judging one measurement against its baseline entry: identity first (machine, model,
workload must match, or the verdict is "not comparable"), then every metric's statistics
(``verdicts.compare_metric``), then what else changed (the greedy output).

A pure function of its inputs: the session reads the baseline and takes the measurement, this
decides. Nothing here imports pytest.
"""

from __future__ import annotations

from typing import Any

from pytest_mlxperf.baseline import pooled_samples
from pytest_mlxperf.config import Settings
from pytest_mlxperf.identity import differences, measurement_differences
from pytest_mlxperf.measure import Measurement
from pytest_mlxperf.metrics import METRICS
from pytest_mlxperf.results import PerfResult
from pytest_mlxperf.verdicts import Verdict, compare_metric, overall


def judge(
    result: PerfResult,
    entry: dict[str, Any] | None,
    others: list[dict[str, Any]],
    machine: dict[str, Any],
    settings: Settings,
) -> PerfResult:
    """Fill ``result``'s verdict, comparisons and notes from the baseline ``entry`` of this
    machine (``None``: none recorded) and the entries of the same measurement recorded on
    ``others`` machines; returns ``result``."""
    measurement: Measurement = result.measurement
    result.tolerances = {
        name: settings.tolerance_for(name) for name in result.all_samples if METRICS[name].gated
    }
    if entry is None:
        if others:
            result.verdict = Verdict.NOT_COMPARABLE
            result.notes.append(
                "baseline recorded on other machine(s) only; "
                + "; ".join(differences(others[0]["machine"], machine, "machine."))
                + " (name equivalent machines with --mlxperf-machine)"
            )
        else:
            result.verdict = Verdict.NEW
            result.notes.append("no baseline yet: record one with --mlxperf-save-baselines")
        return result
    result.baseline_provenance = entry["runs"][-1]["provenance"]
    before = entry["runs"][-1].get("output_fingerprint")
    if before and measurement.fingerprint and before != measurement.fingerprint:
        result.notes.append(
            f"output changed: the greedy tokens differ from the baseline's ({before} -> "
            f"{measurement.fingerprint}): a change of behaviour, not only of speed"
        )
    mismatch = measurement_differences(
        entry,
        {
            "backend": measurement.backend,
            "model": measurement.model,
            "workload": measurement.workload.identity(),
        },
    )
    if mismatch:
        result.verdict = Verdict.NOT_COMPARABLE
        result.notes.append("identity differs from the baseline: " + "; ".join(mismatch))
        return result
    baseline = pooled_samples(entry)
    result.comparisons = [
        compare_metric(
            METRICS[name],
            baseline[name],
            samples,
            tolerance=settings.tolerance_for(name),
            alpha=settings.alpha,
        )
        for name, samples in result.all_samples.items()
        if name in baseline
    ]
    result.verdict = overall([c.verdict for c in result.comparisons])
    return result
