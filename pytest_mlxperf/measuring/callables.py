"""Timing a user's callable (``mlxperf.time``): from a whole pipeline that takes seconds down
to a function that takes microseconds, as per-call seconds (the ``duration`` metric).

A single call of a fast function is shorter than the timer can resolve well, so calls are
timed in *rounds*, as pytest-benchmark does (``BenchmarkFixture._calibrate_timer``): the
timer's precision is measured, then the calls per round grow tenfold until a round is long
enough, and are then estimated from the last round. A round is long enough when the timer's
precision is at most ``1 / RESOLUTION_ROUNDS`` of it (40 µs for a 40 ns clock), so the clock's
resolution moves a round's time by about 0.1% (the calls per round are an estimate from the
calibration's rounds, so a round may fall a little short of it).

Each sample (one repetition) is the median per-call time of a *block* of consecutive rounds
lasting about ``BLOCK_TIME``. Short rounds and a median make a sample robust to what a shared
machine does to a long timing (a time slice given to another process lands in one round, not
in the sample); blocks make the samples few and comparable in number to the repetitions of a
model measurement, which keeps the significance test honest (the rounds of one process are
not independent evidence). A call longer than a block is timed once per sample: a slow
pipeline gets exactly what it had before, an untimed warm-up call and one call per repetition.

Nothing here imports pytest.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_mlxperf.measuring.base import CALLABLE, Measurement
from pytest_mlxperf.measuring.measure import Repetitions

Timer = Callable[[], float]
RESOLUTION_ROUNDS = 1000  # a round lasts at least this many steps of the timer
MIN_ROUND_TIME = 1e-5  # and at least this many seconds
BLOCK_TIME = 0.05  # seconds of rounds behind one sample
PRECISION_PROBES = 2000  # pairs of timer reads that estimate its precision


@functools.cache
def timer_precision(timer: Timer = time.perf_counter) -> float:
    """The smallest positive step of ``timer`` seen between two consecutive reads: what a
    single timing can resolve (pytest-benchmark's ``compute_timer_precision``, in about a
    millisecond instead of a second)."""
    steps = []
    for _ in range(PRECISION_PROBES):
        t1 = timer()
        t2 = timer()
        if t2 > t1:
            steps.append(t2 - t1)
    if not steps:  # a coarse clock: wait for it to tick
        start = timer()
        while (now := timer()) == start:
            pass
        steps.append(now - start)
    return min(steps)


def block_medians(per_call: Sequence[float], blocks: int) -> list[float]:
    """``blocks`` samples from per-call round times in the order they ran: the median of each
    of ``blocks`` consecutive, near-equal blocks (every round, if there are no more)."""
    if len(per_call) <= blocks:
        return [float(v) for v in per_call]
    size, extra = divmod(len(per_call), blocks)
    out, start = [], 0
    for i in range(blocks):
        end = start + size + (1 if i < extra else 0)
        out.append(float(statistics.median(per_call[start:end])))
        start = end
    return out


@dataclass(frozen=True)
class Block:
    """The raw record of one sample: ``rounds`` rounds of ``iterations`` calls, their
    per-call median (the sample), minimum and maximum, and the precision of the timer that
    timed them."""

    rounds: int
    iterations: int
    median: float
    min: float
    max: float
    timer_precision: float


@dataclass(frozen=True)
class CallableWorkload:
    """A user's own callable as a workload. Its identity is its name: give the measurement a
    new name when what it does changes. Calls per round are not part of it: samples are
    per-call seconds whatever the calibration chose."""

    name: str

    @property
    def label(self) -> str:
        return f"call:{self.name}"

    def identity(self) -> dict[str, Any]:
        return {"callable": self.name}


def round_runner(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    timer: Timer = time.perf_counter,
    disable_gc: bool = False,
) -> Callable[[int], float]:
    """A function that calls ``fn(*args, **kwargs)`` n times and returns the seconds the n
    calls took on ``timer`` (the garbage collector paused while timing if ``disable_gc``)."""

    def run(iterations: int) -> float:
        loop = range(iterations)
        paused = disable_gc and gc.isenabled()
        if paused:
            gc.disable()
        try:
            start = timer()
            for _ in loop:
                fn(*args, **kwargs)
            return timer() - start
        finally:
            if paused:
                gc.enable()

    return run


def calibrate(run: Callable[[int], float], min_round: float) -> tuple[int, float]:
    """Calls per round so that a round of ``run`` lasts at least ``min_round`` seconds, and
    the seconds such a round is expected to last: one call, then ten times more until a round
    lasts a tenth of the target, then the estimate from that round (pytest-benchmark's
    procedure). A round shorter than the target is taken thrice and the fastest counts, so
    that one interrupted round does not shrink the estimate. The calls made here are
    untimed."""
    iterations = 1
    while True:
        seconds = run(iterations)
        if seconds < min_round:
            seconds = min(seconds, run(iterations), run(iterations))
        if seconds >= min_round:
            return iterations, seconds
        if seconds >= min_round / 10:
            estimate = max(1, math.ceil(min_round * iterations / seconds))
            return estimate, seconds * estimate / iterations
        iterations *= 10


def time_callable(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    name: str,
    *,
    warmup: int = 1,
    repetitions: int = 5,
    cooldown: float = 0.0,
    block_time: float = BLOCK_TIME,
) -> Measurement:
    """The ``duration`` of one call of ``fn``: calibrate the calls per round (the calibration
    is the first warm-up; ``warmup`` 0 skips it and times single calls), ``warmup - 1`` more
    untimed blocks of rounds, then ``repetitions`` timed blocks; each sample is a block's
    median per-call seconds."""
    protocol = Repetitions(warmup, repetitions, cooldown)  # checks the settings first
    precision = timer_precision()
    run = round_runner(fn, args, kwargs)
    t0 = time.perf_counter()
    iterations, rounds = 1, 1
    if warmup:
        iterations, seconds = calibrate(run, max(MIN_ROUND_TIME, precision * RESOLUTION_ROUNDS))
        rounds = max(1, int(block_time / seconds))

    def block() -> Block:
        per_call = [run(iterations) / iterations for _ in range(rounds)]
        return Block(
            rounds,
            iterations,
            statistics.median(per_call),
            min(per_call),
            max(per_call),
            precision,
        )

    blocks, _ = dataclasses.replace(protocol, warmup=warmup - 1 if warmup else 0).run(block)
    return Measurement(
        backend=CALLABLE,
        model={"name": name},
        workload=CallableWorkload(name),
        samples={"duration": [b.median for b in blocks]},
        raw=blocks,
        warmup=warmup,
        wall_time=time.perf_counter() - t0,
    )
