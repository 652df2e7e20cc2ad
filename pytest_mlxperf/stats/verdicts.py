"""Statistics and verdicts of one metric: is a change both large (beyond tolerance) and real
(significant)?

A regression is declared only when the current samples are significantly worse than the
baseline samples *shifted by the tolerance* (one-sided Mann-Whitney U). The null hypothesis is
"worse by at most the tolerance", so a noisy run whose median happens to sit just past the
tolerance is not failed, and a large change on too few samples is reported as inconclusive
rather than guessed at. Nothing here imports pytest.
"""

from __future__ import annotations

import enum
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pytest_mlxperf.stats.metrics import Metric


def min_p_value(n_baseline: int, n_current: int) -> float:
    """The smallest one-sided p-value a Mann-Whitney U test can reach with these sample counts
    (all of one side beyond all of the other): 1 / C(n + m, n)."""
    return 1 / math.comb(n_baseline + n_current, n_current)


class Verdict(str, enum.Enum):
    PASS = "pass"
    REGRESSION = "regression"
    IMPROVEMENT = "improvement"
    NEW = "new"
    NOT_COMPARABLE = "not comparable"
    INCONCLUSIVE = "inconclusive"
    NOT_GATED = "not gated"


@dataclass(frozen=True)
class Summary:
    """Summary statistics of one metric's samples."""

    n: int
    median: float
    mean: float
    stdev: float
    min: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        if not samples:
            raise ValueError("no samples to summarize")
        return cls(
            n=len(samples),
            median=statistics.median(samples),
            mean=statistics.fmean(samples),
            stdev=statistics.stdev(samples) if len(samples) > 1 else 0.0,
            min=min(samples),
            max=max(samples),
        )

    @property
    def cv(self) -> float:
        """Coefficient of variation (stdev / mean)."""
        return self.stdev / self.mean if self.mean else 0.0


@dataclass(frozen=True)
class MetricComparison:
    """The verdict on one metric, with every figure a failure message needs."""

    metric: Metric
    verdict: Verdict
    baseline: Summary
    current: Summary
    change: float
    tolerance: float
    p_value: float | None
    alpha: float
    note: str = ""
    noisy: bool = False

    def describe(self) -> str:
        """One line: metric, medians, change, significance and sample counts."""
        m = self.metric
        p = "n/a" if self.p_value is None else f"{self.p_value:.3g}"
        text = (
            f"{m.name}: {m.format(self.baseline.median)} -> {m.format(self.current.median)} "
            f"({self.change:+.1%}; tolerance {self.tolerance:.0%}, "
            f"Mann-Whitney p={p} vs alpha={self.alpha:g}, "
            f"n={self.baseline.n}/{self.current.n})"
        )
        return text + (f" [{self.note}]" if self.note else "")

    def to_json(self) -> dict[str, Any]:
        """The comparison as it is written in a results file."""
        return {
            "metric": self.metric.name,
            "verdict": self.verdict.value,
            "baseline_median": self.baseline.median,
            "current_median": self.current.median,
            "change": self.change,
            "tolerance": self.tolerance,
            "p_value": self.p_value,
            "alpha": self.alpha,
            "n_baseline": self.baseline.n,
            "n_current": self.current.n,
            "note": self.note,
            "noisy": self.noisy,
        }


def _p_value(current: Sequence[float], shifted: Sequence[float], alt: str) -> float:
    """Mann-Whitney U p-value of ``current`` against the (moved) baseline ``shifted``
    (``alt``: "less", "greater" or "two-sided")."""
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(current, shifted, alternative=alt).pvalue)


def compare_metric(
    metric: Metric,
    baseline: Sequence[float],
    current: Sequence[float],
    *,
    tolerance: float,
    alpha: float,
) -> MetricComparison:
    """Judge ``current`` samples against ``baseline`` samples for one metric."""
    base, cur = Summary.of(baseline), Summary.of(current)
    change = metric.change(base.median, cur.median)

    def result(
        verdict: Verdict, p: float | None, note: str = "", noisy: bool = False
    ) -> MetricComparison:
        return MetricComparison(
            metric, verdict, base, cur, change, tolerance, p, alpha, note, noisy
        )

    if not metric.gated:
        return result(Verdict.NOT_GATED, None)
    worse = metric.worse_change(base.median, cur.median)
    floor = min_p_value(base.n, cur.n)
    if floor >= alpha:
        if abs(worse) > tolerance:
            return result(
                Verdict.INCONCLUSIVE,
                None,
                f"too few samples: with n={base.n}/{cur.n} no test can reach p < {alpha:g} "
                f"(best possible p={floor:.3g}); use more repetitions",
            )
        return result(Verdict.PASS, None)
    hib = metric.higher_is_better
    worse_alt = "less" if hib else "greater"
    baseline = list(baseline)
    # Regression: current significantly worse than the baseline moved by the tolerance.
    p_reg = _p_value(current, metric.moved(baseline, -tolerance if hib else tolerance), worse_alt)
    if worse > tolerance and p_reg < alpha:
        return result(Verdict.REGRESSION, p_reg)
    better_alt = "greater" if hib else "less"
    p_imp = _p_value(current, metric.moved(baseline, tolerance if hib else -tolerance), better_alt)
    if -worse > tolerance and p_imp < alpha:
        return result(Verdict.IMPROVEMENT, p_imp)
    beyond = abs(worse) > tolerance
    p = (p_reg if worse > 0 else p_imp) if beyond else _p_value(current, baseline, "two-sided")
    # the spread in the tolerance's own terms: relative (CV), or absolute (stdev)
    noise = max(base.stdev, cur.stdev) if metric.absolute else max(base.cv, cur.cv)
    notes = ["beyond tolerance but not significant"] if beyond else []
    if noise > tolerance / 2:
        notes.append(
            f"noisy: samples vary by {noise:.0%} ({'stdev' if metric.absolute else 'CV'}), "
            f"too much to resolve a {tolerance:.0%} "
            "change reliably; add repetitions or quiet the machine"
        )
    return result(Verdict.PASS, p, "; ".join(notes), noisy=noise > tolerance / 2)


def overall(verdicts: Sequence[Verdict]) -> Verdict:
    """The verdict of a measurement from its metrics' verdicts: the most severe wins."""
    order = (
        Verdict.REGRESSION,
        Verdict.NOT_COMPARABLE,
        Verdict.INCONCLUSIVE,
        Verdict.IMPROVEMENT,
        Verdict.NEW,
        Verdict.PASS,
    )
    present = set(verdicts)
    return next((v for v in order if v in present), Verdict.PASS)
