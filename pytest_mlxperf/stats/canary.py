"""The machine speed canary: a fixed small kernel, timed once per session and recorded with
every result and baseline run, so that a machine that got faster or slower (another host of
"the same kind", a busy neighbour, a throttled CPU) is told apart from a change in the code.

Two kernels, each timed in seconds per trial (lower is better), single-threaded by design
(numpy's element-wise loops use no BLAS and no thread pool):

- ``canary_compute``: multiply-add sweeps over a small array that stays in the CPU's L2 cache
  (core clock and SIMD width);
- ``canary_memory``: two copies of a 64 MB buffer (memory bandwidth).

About 0.2 s in all (0.15 s of trials, the rest mapping the buffers). Nothing here imports
pytest or a backend.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pytest_mlxperf.stats.metrics import Metric, sample_problem
from pytest_mlxperf.stats.verdicts import MetricComparison, Verdict, compare_metric

# Timed trials per kernel (one untimed warm-up trial first). Five reach a Mann-Whitney
# p < 0.05 against a one-run baseline (best possible p = 1/252).
TRIALS = 5
COMPUTE_ELEMENTS = 32 * 1024  # float32: 128 KiB per array, three arrays: in L2 on current CPUs
COMPUTE_SWEEPS = 2000
MEMORY_BYTES = 64 * 2**20
MEMORY_COPIES = 2
ALPHA = 0.05
ALIGNMENT = 64  # bytes: a cache line


def _metric(name: str, tolerance: float, what: str) -> Metric:
    return Metric(name, "s", False, tolerance, True, what, name)


# How far each kernel may move before the machine is said to have changed: about three times
# the CV of its medians between separate processes, measured on a shared 2-core VM (compute:
# 1.7-2.6%, within a process 0.2-0.9% typically; memory: 7-11%, within a process 2-5%).
CANARY_METRICS = {
    m.name: m
    for m in (
        _metric(
            "canary_compute",
            0.10,
            "seconds per trial of L2-resident float32 multiply-add sweeps (single-threaded)",
        ),
        # memory bandwidth of a shared VM is heavy-tailed: two sessions of one CI run measured
        # 7.4 and 11.9 ms (1.6x), so only a change beyond 2x counts as another machine
        _metric("canary_memory", 1.00, "seconds per trial of copying a 64 MB buffer twice"),
    )
}


def _aligned(values: Any) -> Any:
    """A copy of a 1-D array starting on a 64-byte boundary. Where numpy's allocator happens to
    place an array changes the SIMD loop's speed by up to 25% from one process to the next,
    which would read as a machine change."""
    import numpy as np

    pad = ALIGNMENT // values.itemsize
    buffer = np.empty(values.size + pad, dtype=values.dtype)
    start = (-buffer.ctypes.data % ALIGNMENT) // values.itemsize
    out = buffer[start : start + values.size]
    out[:] = values
    return out


def _compute_kernel() -> Callable[[], None]:
    import numpy as np

    a = _aligned(np.linspace(0.5, 1.5, COMPUTE_ELEMENTS, dtype=np.float32))
    b = _aligned(np.full(COMPUTE_ELEMENTS, 0.999, dtype=np.float32))
    c = _aligned(np.zeros(COMPUTE_ELEMENTS, dtype=np.float32))

    def trial() -> None:
        for _ in range(COMPUTE_SWEEPS):
            np.multiply(c, b, out=c)
            np.add(c, a, out=c)

    return trial


def _memory_kernel() -> Callable[[], None]:
    import numpy as np

    src = np.ones(MEMORY_BYTES // 8, dtype=np.float64)  # written: its pages are mapped
    dst = np.zeros_like(src)

    def trial() -> None:
        for _ in range(MEMORY_COPIES):
            np.copyto(dst, src)

    return trial


def _timed(trial: Callable[[], None], trials: int) -> list[float]:
    trial()  # warm-up: first-touch page faults, cold caches
    samples = []
    for _ in range(trials):
        start = time.perf_counter()
        trial()
        samples.append(time.perf_counter() - start)
    return samples


def run_canary(trials: int = TRIALS) -> dict[str, list[float]]:
    """Time both kernels: ``{"canary_compute": [s, ...], "canary_memory": [s, ...]}``."""
    return {
        "canary_compute": _timed(_compute_kernel(), trials),
        "canary_memory": _timed(_memory_kernel(), trials),
    }


def pooled_canary(runs: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """The canary samples of baseline runs, per kernel, in one list (runs without one skipped)."""
    pooled: dict[str, list[float]] = {}
    for run in runs:
        canary = run.get("canary")
        if not isinstance(canary, Mapping):
            continue
        for name, samples in canary.items():
            # a hand-edited or foreign value is left out rather than failing the judgement
            if name in CANARY_METRICS and sample_problem({name: samples}, known_only=False) is None:
                pooled.setdefault(name, []).extend(samples)
    return pooled


def canary_shifts(
    baseline: Mapping[str, Sequence[float]],
    current: Mapping[str, Sequence[float]] | None,
    *,
    alpha: float = ALPHA,
) -> list[MetricComparison]:
    """The kernels whose time moved beyond their tolerance, significantly (one-sided
    Mann-Whitney U against the tolerance-shifted baseline, as metrics are judged); empty
    when the machine runs as it did, or when either side has no canary."""
    shifts = []
    for name, metric in CANARY_METRICS.items():
        before, now = baseline.get(name), (current or {}).get(name)
        if not before or not now:
            continue
        comparison = compare_metric(
            metric, before, now, tolerance=metric.default_tolerance, alpha=alpha
        )
        if comparison.verdict in (Verdict.REGRESSION, Verdict.IMPROVEMENT):
            shifts.append(comparison)
    return shifts


def describe_shift(shift: MetricComparison) -> str:
    """``canary compute 1.92x faster than when the baseline was recorded (p=0.004)``."""
    kernel = shift.metric.name.removeprefix("canary_")
    ratio = shift.baseline.median / max(shift.current.median, 1e-12)
    speed = f"{ratio:.2f}x faster" if ratio >= 1 else f"{1 / ratio:.2f}x slower"
    p = "n/a" if shift.p_value is None else f"{shift.p_value:.3g}"
    return (
        f"canary {kernel} {speed} than when the baseline was recorded "
        f"(median {shift.baseline.median * 1e3:.1f} -> {shift.current.median * 1e3:.1f} ms, "
        f"p={p}, n={shift.baseline.n}/{shift.current.n})"
    )
