"""Process-level verdicts: per-process medians, paired by round or not, judged on a confidence
interval of the ratio against the tolerance band."""

from __future__ import annotations

import math
import random

import pytest

from pytest_mlxperf.stats.metrics import METRICS
from pytest_mlxperf.stats.process_stats import compare_processes, process_medians
from pytest_mlxperf.stats.verdicts import Verdict

TPS = METRICS["generation_tps"]  # higher is better
MEM = METRICS["peak_memory"]  # lower is better


def processes(level: float, n: int, spread: float, seed: int, reps: int = 5) -> list[list[float]]:
    """``n`` processes whose medians vary by ``spread`` (relative), each with a few repetitions
    of ±1% around its own level."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        own = level * (1 + rng.gauss(0, spread))
        out.append([own * (1 + rng.uniform(-0.01, 0.01)) for _ in range(reps)])
    return out


def test_process_medians_take_one_number_per_process() -> None:
    assert process_medians([[1.0, 5.0, 3.0], [2.0, 2.0]]) == [3.0, 2.0]


def test_a_clear_slowdown_is_a_regression_with_its_interval() -> None:
    before = processes(100.0, 8, 0.02, seed=1)
    after = processes(80.0, 8, 0.02, seed=2)
    c = compare_processes(TPS, before, after, tolerance=0.05, alpha=0.01, paired=True)
    assert c.verdict is Verdict.REGRESSION and c.decided
    assert c.change == pytest.approx(-0.2, abs=0.03)
    assert c.low < c.change < c.high < -0.05  # the whole interval beyond the tolerance
    assert c.p_value is not None and c.p_value < 0.01
    assert "processes=8/8" in c.describe() and "paired by round" in c.describe()


def test_direction_is_data_for_memory() -> None:
    before = processes(1e9, 6, 0.005, seed=3)
    more = processes(1.2e9, 6, 0.005, seed=4)
    less = processes(0.8e9, 6, 0.005, seed=5)
    assert compare_processes(
        MEM, before, more, tolerance=0.05, alpha=0.01, paired=True
    ).verdict is (Verdict.REGRESSION)
    assert compare_processes(
        MEM, before, less, tolerance=0.05, alpha=0.01, paired=True
    ).verdict is (Verdict.IMPROVEMENT)


def test_no_change_with_little_spread_is_shown_within_tolerance() -> None:
    before = processes(100.0, 6, 0.01, seed=6)
    after = processes(100.0, 6, 0.01, seed=7)
    c = compare_processes(TPS, before, after, tolerance=0.05, alpha=0.01, paired=True)
    assert c.verdict is Verdict.PASS and c.decided
    assert -0.05 < c.low < c.high < 0.05


def test_noise_too_large_to_decide_stays_undecided_then_inconclusive_with_an_mde() -> None:
    before = processes(100.0, 3, 0.15, seed=8)
    after = processes(100.0, 3, 0.15, seed=9)
    running = compare_processes(
        TPS, before, after, tolerance=0.05, alpha=0.01, paired=True, final=False
    )
    assert running.verdict is Verdict.PASS and not running.decided
    done = compare_processes(TPS, before, after, tolerance=0.05, alpha=0.01, paired=True)
    assert done.verdict is Verdict.INCONCLUSIVE and not done.decided
    assert done.mde is not None and done.mde > 0.05
    assert f"{done.mde:.1%}" in done.note and "add rounds" in done.note


def test_the_mde_shrinks_with_more_processes() -> None:
    small = compare_processes(
        TPS,
        processes(100, 4, 0.05, 10),
        processes(100, 4, 0.05, 11),
        tolerance=0.05,
        alpha=0.01,
        paired=True,
    )
    large = compare_processes(
        TPS,
        processes(100, 40, 0.05, 10),
        processes(100, 40, 0.05, 11),
        tolerance=0.05,
        alpha=0.01,
        paired=True,
    )
    assert small.mde is not None and large.mde is not None and large.mde < small.mde


def test_pairing_cancels_drift_between_rounds() -> None:
    # the machine drifts by ±20% from round to round; B is 10% slower in every round
    drift = [1.0, 1.2, 0.8, 1.15, 0.85, 1.1, 0.9, 1.05]
    before = [[100.0 * d] * 3 for d in drift]
    after = [[90.0 * d * (1 + 0.002 * (i % 2))] * 3 for i, d in enumerate(drift)]
    paired = compare_processes(TPS, before, after, tolerance=0.05, alpha=0.01, paired=True)
    unpaired = compare_processes(TPS, before, after, tolerance=0.05, alpha=0.01, paired=False)
    assert paired.verdict is Verdict.REGRESSION
    assert unpaired.verdict is Verdict.INCONCLUSIVE  # the drift swamps it without pairing
    assert paired.high - paired.low < (unpaired.high - unpaired.low) / 10


def test_unpaired_sides_may_differ_in_size() -> None:
    c = compare_processes(
        TPS,
        processes(100, 5, 0.01, 12),
        processes(70, 3, 0.01, 13),
        tolerance=0.05,
        alpha=0.01,
        paired=False,
    )
    assert c.verdict is Verdict.REGRESSION and not c.paired
    assert c.change == pytest.approx(-0.3, abs=0.03)


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 2 processes per side"):
        compare_processes(TPS, [[1.0]], [[1.0], [1.0]], tolerance=0.05, alpha=0.01, paired=False)
    with pytest.raises(ValueError, match="equal process counts"):
        compare_processes(TPS, [[1.0]] * 2, [[1.0]] * 3, tolerance=0.05, alpha=0.01, paired=True)


def test_false_alarms_of_the_rule_stay_below_alpha_on_simulated_a_a() -> None:
    # 400 A/A comparisons, 5 rounds each, 5% process spread: the rule needs the interval
    # beyond a 5% tolerance, so it must almost never fire
    alarms = 0
    for seed in range(400):
        before = processes(100, 5, 0.05, seed=2 * seed)
        after = processes(100, 5, 0.05, seed=2 * seed + 1)
        c = compare_processes(TPS, before, after, tolerance=0.05, alpha=0.01, paired=True)
        alarms += c.verdict is Verdict.REGRESSION
    assert alarms / 400 <= 0.01


def test_identical_medians_decide_by_their_change_alone() -> None:
    same = [[5.0, 5.0]] * 3
    c = compare_processes(TPS, same, same, tolerance=0.05, alpha=0.01, paired=True)
    assert c.verdict is Verdict.PASS and c.decided and math.isclose(c.change, 0.0)
