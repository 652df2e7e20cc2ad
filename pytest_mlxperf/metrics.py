"""The metrics pytest-mlxperf measures: names, units, directions and default tolerances.

A metric's direction is data: every comparison asks ``Metric.higher_is_better`` instead of
branching on the metric's name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """One measured quantity and how to judge a change in it."""

    name: str
    unit: str
    higher_is_better: bool
    default_tolerance: float
    gated: bool
    description: str

    def format(self, value: float) -> str:
        """Render a value in the metric's display unit (memory in GB = 1e9 bytes, like mlx-lm)."""
        if self.unit == "bytes":
            return f"{value / 1e9:.3f} GB"
        if self.unit == "s":
            return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"
        return f"{value:.1f} {self.unit}"

    def worse_change(self, baseline: float, current: float) -> float:
        """Relative change in the *worse* direction: positive means ``current`` is worse."""
        if baseline == 0:
            return 0.0
        change = (current - baseline) / baseline
        return -change if self.higher_is_better else change


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "prompt_tps",
            "tok/s",
            True,
            0.10,
            True,
            "prompt tokens / time to first token (mlx-lm's convention)",
        ),
        Metric(
            "generation_tps",
            "tok/s",
            True,
            0.10,
            True,
            "(generated - 1) / (t_last - t_first): steady decode, first token excluded",
        ),
        Metric(
            "ttft",
            "s",
            False,
            0.15,
            True,
            "seconds from the start of prompt processing to the first token being ready",
        ),
        Metric(
            "peak_memory",
            "bytes",
            False,
            0.05,
            True,
            "peak memory of one repetition (MLX allocator peak; llama.cpp: process VmHWM)",
        ),
        Metric(
            "iterations_per_s",
            "it/s",
            True,
            0.10,
            True,
            "fine-tuning: timed training iterations (one optimizer step each) / seconds from "
            "the end of the warm-up iterations to the end of the last one",
        ),
        Metric(
            "trained_tps",
            "tok/s",
            True,
            0.10,
            True,
            "fine-tuning: tokens that count toward the loss (mlx-lm's trained_tokens) in the "
            "timed iterations / the same seconds",
        ),
        Metric(
            "duration",
            "s",
            False,
            0.10,
            True,
            "seconds one call of a user's callable takes, end to end",
        ),
        Metric(
            "load_time",
            "s",
            False,
            0.50,
            False,
            "seconds to load the model (one sample per session: reported, not gated)",
        ),
    )
}


def metric(name: str) -> Metric:
    """Look a metric up by name, with an error that lists the known ones."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}") from None
