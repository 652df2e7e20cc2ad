"""The metrics pytest-mlxperf measures: names, units, directions and default tolerances.

A metric's direction is data: every comparison asks ``Metric.higher_is_better`` instead of
branching on the metric's name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Metric:
    """One measured quantity and how to judge a change in it."""

    name: str
    unit: str
    higher_is_better: bool
    default_tolerance: float
    gated: bool
    description: str
    label: str  # column heading in tables

    def display_unit(self, largest: float) -> tuple[float, str]:
        """(factor, unit) for showing values up to ``largest``: memory in GB (1e9 bytes, like
        mlx-lm) from 1 GB and in MB below, so small models' differences stay visible; seconds
        in ms below one second."""
        if self.unit == "bytes":
            return (1e-9, "GB") if largest >= 1e9 else (1e-6, "MB")
        if self.unit == "s":
            return (1.0, "s") if largest >= 1 else (1e3, "ms")
        return 1.0, self.unit

    def format(self, value: float) -> str:
        """Render a value in the metric's display unit."""
        factor, unit = self.display_unit(value)
        decimals = 3 if unit == "GB" else 2 if unit == "s" else 1
        return f"{value * factor:.{decimals}f} {unit}"

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
            "prompt",
        ),
        Metric(
            "generation_tps",
            "tok/s",
            True,
            0.10,
            True,
            "(generated - 1) / (t_last - t_first): steady decode, first token excluded",
            "generation",
        ),
        Metric(
            "ttft",
            "s",
            False,
            0.15,
            True,
            "seconds from the start of prompt processing to the first token being ready",
            "TTFT",
        ),
        Metric(
            "peak_memory",
            "bytes",
            False,
            0.05,
            True,
            "peak memory of one repetition (MLX allocator peak; llama.cpp: process VmHWM)",
            "peak mem",
        ),
        Metric(
            "iterations_per_s",
            "it/s",
            True,
            0.10,
            True,
            "fine-tuning: timed training iterations (one optimizer step each) / seconds from "
            "the end of the warm-up iterations to the end of the last one",
            "iterations",
        ),
        Metric(
            "trained_tps",
            "tok/s",
            True,
            0.10,
            True,
            "fine-tuning: tokens that count toward the loss (mlx-lm's trained_tokens) in the "
            "timed iterations / the same seconds",
            "trained",
        ),
        Metric(
            "duration",
            "s",
            False,
            0.10,
            True,
            "seconds one call of a user's callable takes, end to end",
            "duration",
        ),
        Metric(
            "load_time",
            "s",
            False,
            0.50,
            False,
            "seconds to load the model (one sample per session: reported, not gated)",
            "load",
        ),
    )
}


def metric(name: str) -> Metric:
    """Look a metric up by name, with an error that lists the known ones."""
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(METRICS)}") from None


def sample_problem(samples: Any, *, known_only: bool) -> str | None:
    """What is wrong with a ``{metric: [values]}`` mapping read from a file, or ``None``: each
    list non-empty, each value a finite number >= 0, and (``known_only``) each metric known.
    Baseline files tolerate metrics this version does not know (a newer version wrote them);
    results files, which are judged metric by metric, do not."""
    if not isinstance(samples, dict):
        return "samples must be a JSON object"
    for name, values in samples.items():
        if known_only and name not in METRICS:
            return f"unknown metric {name!r}"
        if not isinstance(values, list) or not values:
            return f"samples of {name!r} must be a non-empty list"
        for value in values:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return f"sample {value!r} of {name!r} is not a number"
            if not math.isfinite(value) or value < 0:
                return f"sample {value!r} of {name!r} is not a finite number >= 0"
    return None
