"""Verdicts: large *and* significant, in the metric's direction; too few samples said so."""

from __future__ import annotations

import pytest

from pytest_mlxperf.stats.metrics import METRICS
from pytest_mlxperf.stats.verdicts import Summary, Verdict, compare_metric, min_p_value, overall

TPS = METRICS["generation_tps"]
MEM = METRICS["peak_memory"]
BASE = [100.0, 101.0, 99.0, 100.5, 99.5]


def scaled(samples: list[float], factor: float) -> list[float]:
    return [s * factor for s in samples]


def test_unchanged_passes() -> None:
    c = compare_metric(TPS, BASE, [100.2, 99.8, 100.1, 99.9, 100.4], tolerance=0.1, alpha=0.01)
    assert c.verdict is Verdict.PASS
    assert c.p_value is not None


def test_large_significant_slowdown_is_a_regression() -> None:
    c = compare_metric(TPS, BASE, scaled(BASE, 0.7), tolerance=0.1, alpha=0.01)
    assert c.verdict is Verdict.REGRESSION
    assert c.change == pytest.approx(-0.3)
    assert c.p_value is not None and c.p_value < 0.01
    text = c.describe()
    assert "generation_tps" in text and "-30.0%" in text and "n=5/5" in text


def test_slowdown_within_tolerance_passes() -> None:
    c = compare_metric(TPS, BASE, scaled(BASE, 0.95), tolerance=0.1, alpha=0.01)
    assert c.verdict is Verdict.PASS


def test_direction_is_data_memory_increase_is_regression() -> None:
    assert compare_metric(MEM, BASE, scaled(BASE, 1.3), tolerance=0.05, alpha=0.01).verdict is (
        Verdict.REGRESSION
    )
    assert compare_metric(MEM, BASE, scaled(BASE, 0.7), tolerance=0.05, alpha=0.01).verdict is (
        Verdict.IMPROVEMENT
    )
    assert compare_metric(TPS, BASE, scaled(BASE, 1.3), tolerance=0.1, alpha=0.01).verdict is (
        Verdict.IMPROVEMENT
    )


def test_identical_constant_samples_pass() -> None:
    c = compare_metric(MEM, [5e8] * 5, [5e8] * 5, tolerance=0.05, alpha=0.01)
    assert c.verdict is Verdict.PASS


def test_constant_memory_growth_is_detected() -> None:
    c = compare_metric(MEM, [5e8] * 5, [6e8] * 5, tolerance=0.05, alpha=0.01)
    assert c.verdict is Verdict.REGRESSION


def test_large_but_noisy_change_is_not_failed() -> None:
    # medians 20% apart, but the samples overlap wildly: not significant beyond tolerance.
    base = [100.0, 40.0, 160.0, 90.0, 110.0]
    cur = [80.0, 150.0, 30.0, 70.0, 95.0]
    c = compare_metric(TPS, base, cur, tolerance=0.1, alpha=0.01)
    assert c.verdict is Verdict.PASS
    assert "not significant" in c.note


def test_too_few_samples_is_inconclusive_not_guessed() -> None:
    # 4 vs 4 samples: the best one-sided p is 1/70 = 0.014, which can never beat alpha=0.01
    assert min_p_value(4, 4) == pytest.approx(1 / 70)
    c = compare_metric(TPS, [100.0] * 4, [50.0] * 4, tolerance=0.1, alpha=0.01)
    assert c.verdict is Verdict.INCONCLUSIVE
    assert "too few samples" in c.note
    # ... while a looser alpha makes the same samples enough
    assert compare_metric(TPS, [100.0] * 4, [50.0] * 4, tolerance=0.1, alpha=0.05).verdict is (
        Verdict.REGRESSION
    )


def test_ungated_metric_is_reported_only() -> None:
    c = compare_metric(METRICS["load_time"], [1.0], [9.0], tolerance=0.5, alpha=0.01)
    assert c.verdict is Verdict.NOT_GATED


def test_overall_takes_the_most_severe() -> None:
    assert overall([Verdict.PASS, Verdict.IMPROVEMENT, Verdict.REGRESSION]) is Verdict.REGRESSION
    assert overall([Verdict.PASS, Verdict.IMPROVEMENT]) is Verdict.IMPROVEMENT
    assert overall([]) is Verdict.PASS


def test_summary() -> None:
    s = Summary.of([1.0, 2.0, 3.0])
    assert (s.n, s.median, s.min, s.max) == (3, 2.0, 1.0, 3.0)
    assert s.cv == pytest.approx(0.5)
    with pytest.raises(ValueError):
        Summary.of([])


def test_noise_beyond_half_the_tolerance_is_flagged() -> None:
    noisy = [100.0, 70.0, 130.0, 85.0, 115.0]
    c = compare_metric(TPS, noisy, noisy, tolerance=0.1, alpha=0.01)
    assert c.verdict is Verdict.PASS and c.noisy and c.note.startswith("noisy: samples vary by")
    quiet = compare_metric(TPS, BASE, BASE, tolerance=0.1, alpha=0.01)
    assert not quiet.noisy and quiet.note == ""
