"""The metrics pytest-mlxperf measures: names, units, directions and default tolerances.

A metric's direction is data: every comparison asks ``Metric.higher_is_better`` instead of
branching on the metric's name. So is the kind of its tolerance: a ratio of the baseline for
most, a difference (``Metric.absolute``) for a metric whose baseline sits near zero, where a
ratio means nothing (memory growth: a baseline of 0.001% and a current 0.002% are "+100%").
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
    # the tolerance is a difference in the metric's own unit (not a ratio of the baseline), and
    # values may be negative: for metrics whose baseline sits near zero
    absolute: bool = False

    def display_unit(self, largest: float) -> tuple[float, str]:
        """(factor, unit) for showing values up to ``largest``: memory in GB (1e9 bytes, like
        mlx-lm) from 1 GB and in MB below, so small models' differences stay visible; seconds
        in ms below one second, in us below a millisecond and in ns below a microsecond (a
        fast callable's duration)."""
        if self.unit == "bytes":
            return (1e-9, "GB") if largest >= 1e9 else (1e-6, "MB")
        if self.unit == "s":
            steps = ((1.0, "s"), (1e3, "ms"), (1e6, "us"))
            return next(((f, u) for f, u in steps if largest * f >= 1), (1e9, "ns"))
        if self.unit == "fraction":
            return 100.0, "%"
        return 1.0, self.unit

    def format(self, value: float) -> str:
        """Render a value in the metric's display unit."""
        factor, unit = self.display_unit(abs(value))
        decimals = 3 if unit == "GB" else 2 if unit in ("s", "%") else 1
        return f"{value * factor:.{decimals}f} {unit}"

    def change(self, baseline: float, current: float) -> float:
        """The change the tolerance is compared with: relative to the baseline, or the
        difference for an ``absolute`` metric."""
        if self.absolute:
            return current - baseline
        return (current - baseline) / baseline if baseline else 0.0

    def worse_change(self, baseline: float, current: float) -> float:
        """``change`` in the *worse* direction: positive means ``current`` is worse."""
        change = self.change(baseline, current)
        return -change if self.higher_is_better else change

    def moved(self, values: list[float], by: float) -> list[float]:
        """``values`` moved by ``by`` tolerances: scaled by ``1 + by``, or ``by`` added for an
        ``absolute`` metric (the null hypothesis of a one-sided test beyond the tolerance)."""
        return [v + by for v in values] if self.absolute else [v * (1 + by) for v in values]


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric(
            "prompt_tps",
            "tok/s",
            True,
            0.10,
            True,
            "prompt tokens / time to first token (mlx-lm's convention); servers: median over "
            "a repetition's requests",
            "prompt",
        ),
        Metric(
            "generation_tps",
            "tok/s",
            True,
            0.10,
            True,
            "(generated - 1) / (t_last - t_first): steady decode, first token excluded; "
            "servers: per request (its token events), median over a repetition's requests",
            "generation",
        ),
        Metric(
            "ttft",
            "s",
            False,
            0.15,
            True,
            "seconds from the start of prompt processing to the first token being ready; "
            "servers: from sending the request to its first token event (HTTP and queueing "
            "included), median over a repetition's requests",
            "TTFT",
        ),
        Metric(
            "itl_p50",
            "s",
            False,
            0.15,
            True,
            "servers: median gap between streamed token events of a repetition's requests "
            "(inter-token latency; a server that sends several tokens in one event, as "
            "mlx_lm.server does for incomplete UTF-8, has fewer and longer gaps)",
            "ITL p50",
        ),
        Metric(
            "itl_p95",
            "s",
            False,
            0.20,
            True,
            "servers: 95th percentile of the gaps between streamed token events; measured only "
            "with at least 100 gaps per repetition",
            "ITL p95",
        ),
        Metric(
            "itl_p99",
            "s",
            False,
            0.25,
            True,
            "servers: 99th percentile of the gaps between streamed token events; measured only "
            "with at least 500 gaps per repetition",
            "ITL p99",
        ),
        Metric(
            "e2e_latency",
            "s",
            False,
            0.10,
            True,
            "servers: median seconds from sending a request to the end of its stream",
            "latency",
        ),
        Metric(
            "throughput_tps",
            "tok/s",
            True,
            0.10,
            True,
            "servers: tokens generated by all of a repetition's requests / its wall time "
            "(aggregate output throughput at the workload's concurrency)",
            "throughput",
        ),
        Metric(
            "server_prompt_tps",
            "tok/s",
            True,
            0.10,
            False,
            "servers: prompt tokens/s as the server itself reports it (llama.cpp's server "
            "timings.prompt_per_second; median over requests); reported beside ours, not gated",
            "server prompt",
        ),
        Metric(
            "server_generation_tps",
            "tok/s",
            True,
            0.10,
            False,
            "servers: generation tokens/s as the server itself reports it (llama.cpp's server "
            "timings.predicted_per_second); reported beside ours, not gated",
            "server gen",
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
            "process_peak_memory",
            "bytes",
            False,
            0.05,
            True,
            "peak memory of the measuring process in one repetition, alike for every backend "
            "(Linux VmHWM, macOS lifetime max physical footprint): for MLX what its allocator "
            "peak misses (the buffer cache, the Python heap, anything else the process holds); "
            "for llama.cpp the same figure as its peak_memory; for a started server, the "
            "server process's",
            "process peak",
        ),
        Metric(
            "memory_growth",
            "fraction",
            False,
            0.01,
            True,
            "growth of the measuring process's resident memory (Linux VmRSS, macOS physical "
            "footprint) per repetition (fine-tuning: per iteration, a least-squares slope), as "
            "a fraction of its resident memory at the start; the tolerance is a difference "
            "(1% = one percentage point more growth per step than the baseline's)",
            "mem growth",
            absolute=True,
        ),
        Metric(
            "swap_memory",
            "bytes",
            False,
            0.05,
            False,
            "memory of the measuring process swapped out at the end of a repetition (Linux "
            "VmSwap); recorded only when there was any (reported, not gated)",
            "swap",
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


def tolerance_of(name: str, *chosen: float | None) -> float:
    """The tolerance that applies to metric ``name``: the first of ``chosen`` that is set, most
    specific first (a test's or command line's, then one recorded with a result), else the
    metric's own default. The one precedence rule of the in-session judge and of the offline
    comparison."""
    return next((t for t in chosen if t), METRICS[name].default_tolerance)


def sample_problem(samples: Any, *, known_only: bool) -> str | None:
    """What is wrong with a ``{metric: [values]}`` mapping read from a file, or ``None``: each
    list non-empty, each value a finite number >= 0, and (``known_only``) each metric known.
    Baseline files tolerate metrics this version does not know (a newer version wrote them);
    results files, which are judged metric by metric, do not. An ``absolute`` metric (memory
    growth) may be negative."""
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
            signed = name in METRICS and METRICS[name].absolute
            if not math.isfinite(value) or (value < 0 and not signed):
                return f"sample {value!r} of {name!r} is not a finite number >= 0"
    return None
