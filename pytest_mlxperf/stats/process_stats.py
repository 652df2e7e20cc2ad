"""Statistics with the process as the unit: is a change between two sides, each measured in
several separate processes, both beyond tolerance and real?

Why: on a shared machine the medians of separate processes of unchanged code differ far more
than the repetitions inside one process (benchmarks/README.md measures both), so a test that
counts every repetition as independent evidence overstates it, and one process per side cannot
tell a version from a lucky process. Here each process contributes one number, the median of its
repetitions, and the comparison is on log ratios of those medians:

- **paired** (rounds of an interleaved A/B run, ABBA...): ``d_i = ln(B_i / A_i)`` for round i,
  so slow drift of the machine cancels within a round;
- **unpaired** (sides of unequal size): the difference of mean log medians with Welch's
  standard error.

The change is ``exp(mean d) - 1`` with a one-sided ``1 - alpha`` t confidence bound on each
side. Verdicts, in the metric's worse direction (``Metric.higher_is_better`` is data):

- **regression**: the lower bound of the worsening lies beyond the tolerance (large *and* real);
- **improvement**: the same in the better direction;
- **pass**: the whole interval lies within the tolerance band (shown to be within tolerance);
- otherwise **undecided**: more rounds would tell; when no more will come it is reported as
  *inconclusive*, with the smallest change the data could have resolved (``mde``).

Nothing here imports pytest.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pytest_mlxperf.stats.metrics import Metric
from pytest_mlxperf.stats.verdicts import Summary, Verdict

# one-sided z for 95% power, used for the minimum detectable effect
_Z_POWER = 1.6448536269514722
MIN_PROCESSES = 2


def _t(q: float, df: float) -> float:
    from scipy.stats import t

    return float(t.ppf(q, df))


def _t_sf(x: float, df: float) -> float:
    from scipy.stats import t

    return float(t.sf(x, df))


@dataclass(frozen=True)
class ProcessComparison:
    """The verdict on one metric from per-process medians, with the figures a report needs.

    ``change`` is the estimated relative change of current against reference (``+0.1``: 10%
    higher), ``low``/``high`` its confidence bounds, ``worse_low``/``worse_high`` the same
    interval in the metric's worse direction (positive: worse)."""

    metric: Metric
    verdict: Verdict
    decided: bool
    baseline: Summary  # of the reference side's process medians
    current: Summary  # of the current side's process medians
    change: float
    low: float
    high: float
    tolerance: float
    alpha: float
    p_value: float | None  # one-sided, against the tolerance boundary in the verdict's direction
    paired: bool
    mde: float | None  # smallest worsening resolvable as a regression with 95% power
    note: str = ""
    noisy: bool = False

    @property
    def n_processes(self) -> tuple[int, int]:
        return self.baseline.n, self.current.n

    def describe(self) -> str:
        """One line: metric, medians of process medians, change with its interval, the test,
        and the process counts."""
        m = self.metric
        p = "n/a" if self.p_value is None else f"{self.p_value:.3g}"
        how = "paired by round" if self.paired else "unpaired"
        text = (
            f"{m.name}: {m.format(self.baseline.median)} -> {m.format(self.current.median)} "
            f"({self.change:+.1%}, {1 - self.alpha:.0%} CI {self.low:+.1%}..{self.high:+.1%}; "
            f"tolerance {self.tolerance:.0%}, t-test on process medians ({how}) p={p} vs "
            f"alpha={self.alpha:g}, processes={self.baseline.n}/{self.current.n})"
        )
        return text + (f" [{self.note}]" if self.note else "")

    def to_json(self) -> dict[str, Any]:
        return {
            "metric": self.metric.name,
            "verdict": self.verdict.value,
            "decided": self.decided,
            "baseline_median": self.baseline.median,
            "current_median": self.current.median,
            "change": self.change,
            "ci": [self.low, self.high],
            "tolerance": self.tolerance,
            "p_value": self.p_value,
            "alpha": self.alpha,
            "n_baseline": self.baseline.n,
            "n_current": self.current.n,
            "paired": self.paired,
            "mde": self.mde,
            "note": self.note,
        }


def process_medians(processes: Sequence[Sequence[float]]) -> list[float]:
    """One number per process: the median of its repetitions."""
    return [statistics.median(p) for p in processes if p]


def signed_rank_critical(n: int, alpha: float) -> int | None:
    """The largest ``c`` with P(T+ <= c) <= alpha for the Wilcoxon signed-rank statistic of
    ``n`` pairs (exact null distribution), or ``None`` when even T+ = 0 is likelier than
    ``alpha`` (at alpha 0.01: fewer than 7 pairs)."""
    top = n * (n + 1) // 2
    counts = [1] + [0] * top
    for rank in range(1, n + 1):
        for total in range(top, rank - 1, -1):
            counts[total] += counts[total - rank]
    cumulative, critical = 0, None
    for c, count in enumerate(counts):
        cumulative += count
        if cumulative / 2**n > alpha:
            break
        critical = c
    return critical


def _walsh_interval(d: Sequence[float], alpha: float) -> tuple[float, float, float]:
    """Hodges-Lehmann estimate of the pseudo-median of ``d`` with its one-sided ``1 - alpha``
    bounds from the signed-rank test's inversion (the Walsh averages at the critical rank);
    infinite bounds where the test cannot reach ``alpha``."""
    walsh = sorted((d[i] + d[j]) / 2 for i in range(len(d)) for j in range(i, len(d)))
    critical = signed_rank_critical(len(d), alpha)
    estimate = statistics.median(walsh)
    if critical is None:
        return estimate, -math.inf, math.inf
    return estimate, walsh[critical], walsh[len(walsh) - 1 - critical]


def _signed_rank_p(d: Sequence[float], alternative: str) -> float:
    from scipy.stats import wilcoxon

    if all(v == 0 for v in d):
        return 1.0
    return float(wilcoxon(d, alternative=alternative).pvalue)


def _log_differences(
    reference: Sequence[float], current: Sequence[float], paired: bool
) -> tuple[float, float, float]:
    """(mean log ratio, its standard error, degrees of freedom)."""
    if paired:
        d = [math.log(c / r) for r, c in zip(reference, current, strict=True)]
        return statistics.fmean(d), statistics.stdev(d) / math.sqrt(len(d)), len(d) - 1
    la, lb = [math.log(v) for v in reference], [math.log(v) for v in current]
    va, vb = statistics.variance(la) / len(la), statistics.variance(lb) / len(lb)
    se = math.sqrt(va + vb)
    if se == 0:
        return statistics.fmean(lb) - statistics.fmean(la), 0.0, len(la) + len(lb) - 2
    df = (va + vb) ** 2 / (va**2 / (len(la) - 1) + vb**2 / (len(lb) - 1))
    return statistics.fmean(lb) - statistics.fmean(la), se, df


def compare_processes(
    metric: Metric,
    reference: Sequence[Sequence[float]],
    current: Sequence[Sequence[float]],
    *,
    tolerance: float,
    alpha: float,
    paired: bool,
    final: bool = True,
    method: str = "t",
) -> ProcessComparison:
    """Judge ``current`` against ``reference``, each a list of processes (each a list of its
    repetitions' samples). ``paired``: process i of each side ran in the same round (the
    sides must then be of equal length). ``final``: no more rounds will come, so an undecided
    metric is *inconclusive* (otherwise it stays *pass* with ``decided`` false). ``method``
    (paired only): ``"t"``, a t interval of the mean log ratio, or ``"rank"``, the
    Hodges-Lehmann estimate with the Wilcoxon signed-rank interval, which a disturbed round
    cannot drag but which needs 7 rounds to reach alpha 0.01."""
    if method not in ("t", "rank"):
        raise ValueError(f"unknown method {method!r}: use 't' or 'rank'")
    ref, cur = process_medians(reference), process_medians(current)
    if len(ref) < MIN_PROCESSES or len(cur) < MIN_PROCESSES:
        raise ValueError(
            f"process-level comparison needs at least {MIN_PROCESSES} processes per side "
            f"(got {len(ref)} and {len(cur)})"
        )
    if paired and len(ref) != len(cur):
        raise ValueError(f"paired comparison needs equal process counts ({len(ref)}/{len(cur)})")
    if min(ref + cur) <= 0:
        raise ValueError(f"{metric.name}: process medians must be > 0 for a ratio")
    base, now = Summary.of(ref), Summary.of(cur)
    mean, se, df = _log_differences(ref, cur, paired)
    if not metric.gated:
        return ProcessComparison(
            metric,
            Verdict.NOT_GATED,
            True,
            base,
            now,
            math.exp(mean) - 1,
            math.exp(mean) - 1,
            math.exp(mean) - 1,
            tolerance,
            alpha,
            None,
            paired,
            None,
        )
    sign = -1.0 if metric.higher_is_better else 1.0  # log change -> worsening
    worse = sign * mean
    # the tolerance as a log ratio in each direction, matching verdicts.compare_metric's shifts
    hib = metric.higher_is_better
    worse_limit = -math.log(1 - tolerance) if hib else math.log(1 + tolerance)
    better_limit = math.log(1 + tolerance) if hib else -math.log(1 - tolerance)
    q = _t(1 - alpha, df) if se > 0 else 0.0
    lo, hi = mean - q * se, mean + q * se
    p_reg = _t_sf((worse - worse_limit) / se, df) if se > 0 else float(worse <= worse_limit)
    p_imp = _t_sf((-worse - better_limit) / se, df) if se > 0 else float(-worse <= better_limit)
    if method == "rank" and paired:
        d = [math.log(c / r) for r, c in zip(ref, cur, strict=True)]
        mean, lo, hi = _walsh_interval(d, alpha)
        worse = sign * mean
        p_reg = _signed_rank_p([sign * v - worse_limit for v in d], "greater")
        p_imp = _signed_rank_p([-sign * v - better_limit for v in d], "greater")
    worse_lo, worse_hi = sorted((sign * lo, sign * hi))
    note = ""
    if se == 0:
        note = "no spread between processes: identical medians"
    if worse_lo > worse_limit:
        verdict, decided, p = Verdict.REGRESSION, True, p_reg
    elif worse_hi < -better_limit:
        verdict, decided, p = Verdict.IMPROVEMENT, True, p_imp
    elif worse_hi < worse_limit and worse_lo > -better_limit:
        verdict, decided, p = Verdict.PASS, True, max(p_reg, p_imp)
    else:
        verdict = Verdict.INCONCLUSIVE if final else Verdict.PASS
        decided, p = False, min(p_reg, p_imp)
    mde = None
    if se > 0:
        mde_log = worse_limit + (q + _Z_POWER) * se
        mde = math.exp(mde_log) - 1 if not hib else 1 - math.exp(-mde_log)
    if not decided and final:
        resolvable = f"{mde:.1%}" if mde is not None else "n/a"
        note = (
            f"undecided after {len(cur)} processes per side: the interval straddles the "
            f"tolerance; it could have resolved a worsening of about {resolvable} (95% power); "
            "add rounds or quiet the machine"
        )
    spread = max(base.cv, now.cv)
    return ProcessComparison(
        metric=metric,
        verdict=verdict,
        decided=decided,
        baseline=base,
        current=now,
        change=math.exp(mean) - 1,
        low=math.exp(lo) - 1,
        high=math.exp(hi) - 1,
        tolerance=tolerance,
        alpha=alpha,
        p_value=p,
        paired=paired,
        mde=mde,
        note=note,
        noisy=spread > tolerance / 2,
    )
