"""Judging one measurement against its baseline entry: identity first (machine, model,
workload must match, or the verdict is "not comparable"), then every metric's statistics
(``verdicts.compare_metric``), then what else changed (the greedy output, the machine's speed
as its canary measures it).

A pure function of its inputs: the session reads the baseline and takes the measurement, this
decides. Nothing here imports pytest.
"""

from __future__ import annotations

from typing import Any

from pytest_mlxperf.host.machine import missing_cpu_detail
from pytest_mlxperf.measuring.measure import Measurement
from pytest_mlxperf.settings.config import Settings
from pytest_mlxperf.stats.canary import canary_shifts, describe_shift, pooled_canary
from pytest_mlxperf.stats.identity import differences, measurement_differences
from pytest_mlxperf.stats.metrics import METRICS
from pytest_mlxperf.stats.verdicts import MetricComparison, Verdict, compare_metric, overall
from pytest_mlxperf.store.baseline import pooled_samples
from pytest_mlxperf.store.results import PerfResult

# units of the metrics that a faster or slower machine moves (time, and rates over time)
TIMED_UNITS = ("s", "tok/s", "it/s")


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
    tolerances = {name: settings.tolerance_for(name) for name in result.all_samples}
    result.tolerances = {name: t for name, t in tolerances.items() if METRICS[name].gated}
    if entry is None:
        if others:
            result.verdict = Verdict.NOT_COMPARABLE
            result.notes.append(_other_machines_note(others, machine))
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
            tolerance=tolerances[name],
            alpha=settings.alpha,
        )
        for name, samples in result.all_samples.items()
        if name in baseline
    ]
    result.verdict = overall([c.verdict for c in result.comparisons])
    shifts = canary_shifts(pooled_canary(entry["runs"]), result.canary, alpha=settings.alpha)
    if shifts:
        # the comparisons stay in the result, so the numbers are still there to see
        factor = max(max(r, 1 / r) for r in (s.baseline.median / s.current.median for s in shifts))
        beyond = [
            c
            for c in result.comparisons
            if c.verdict in (Verdict.REGRESSION, Verdict.IMPROVEMENT) and not _explained(c, factor)
        ]
        changed = "machine speed changed: " + "; ".join(describe_shift(s) for s in shifts)
        if beyond:
            result.verdict = overall([c.verdict for c in beyond])
            result.notes.append(
                f"{changed}; the change of {', '.join(c.metric.name for c in beyond)} is beyond "
                f"what a machine {factor:.2f}x faster or slower explains, so it stands"
            )
        else:
            result.verdict = Verdict.NOT_COMPARABLE
            result.notes.append(
                f"{changed}: these numbers reflect the machine, not the code; re-record the "
                "baseline (--mlxperf-save-baselines) or use a quiet machine"
            )
    return result


def _explained(comparison: MetricComparison, factor: float) -> bool:
    """Whether a machine ``factor`` times faster or slower could explain a comparison: a
    metric of time or speed whose medians differ by no more than ``factor`` beyond its
    tolerance. Memory does not follow the machine's speed, and a change far beyond it (a
    100x slowdown on a machine 16% faster) is the code's."""
    if comparison.metric.absolute or comparison.metric.unit not in TIMED_UNITS:
        return False
    before, now = comparison.baseline.median, comparison.current.median
    if before <= 0 or now <= 0:
        return False
    return max(now / before, before / now) <= factor * (1 + comparison.tolerance)


def _other_machines_note(others: list[dict[str, Any]], current: dict[str, Any]) -> str:
    """Why baselines recorded on other machines are not used: how the machines differ, and
    whether the baseline's fingerprint is an older one that could not tell CPUs apart."""
    older = [o["machine"] for o in others if missing_cpu_detail(o["machine"], current)]
    recorded = older[0] if older else others[0]["machine"]
    note = "baseline recorded on other machine(s) only; " + "; ".join(
        differences(recorded, current, "machine.")
    )
    if older:
        missing = "/".join(missing_cpu_detail(recorded, current))
        return (
            f"{note}; it was recorded with an older fingerprint that did not tell CPU models "
            f"apart (no {missing}): re-record it on this machine with --mlxperf-save-baselines"
        )
    return note + " (name equivalent machines with --mlxperf-machine)"
