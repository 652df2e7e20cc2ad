"""The measurement protocol: prompt, warm-up, timed repetitions, metrics from raw timestamps.

Independent of pytest, so the CLI and other harnesses can use it.

Definitions (per repetition):
- ``ttft`` = time from the start of prompt processing to the first generated token being ready;
- ``prompt_tps`` = prompt tokens / ``ttft`` (mlx-lm's convention);
- ``generation_tps`` = (generated - 1) / (t_last - t_first): steady decode, the first token
  (which belongs to the prefill) excluded;
- ``peak_memory`` = the backend's peak for that repetition alone (reset before it);
  ``process_peak_memory`` = the process's, where the backend's figure is another (MLX);
- ``memory_growth`` = (resident memory after the repetition - after the one before) / resident
  memory before the first timed repetition: a leak makes every repetition's sample positive
  even when each peak is within its tolerance. One sample per repetition (not one slope per
  measurement), so that it is judged like any other metric; its median is robust to a single
  one-off allocation. Its baseline sits near zero, so its tolerance is a difference, not a
  ratio (``Metric.absolute``);
- ``swap_memory`` = the process's memory swapped out after the repetition, only where any was.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pytest_mlxperf.measuring.base import LoadedModel, Measurement, RawSample
from pytest_mlxperf.measuring.progress import TICK_EVERY, Progress, ProgressFn, Ticker
from pytest_mlxperf.measuring.workload import Workload

T = TypeVar("T")


class MeasurementError(RuntimeError):
    """The measurement did not do the work it was asked to do."""


@dataclass(frozen=True)
class Repetitions:
    """The repetition protocol every measurement shares: ``warmup`` untimed runs, then
    ``repetitions`` timed ones with ``cooldown`` seconds of rest between them. Checked when
    made, so bad settings are refused before anything runs."""

    warmup: int = 1
    repetitions: int = 5
    cooldown: float = 0.0

    def __post_init__(self) -> None:
        if self.repetitions < 1:
            raise ValueError(f"repetitions must be >= 1 (got {self.repetitions})")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0 (got {self.warmup})")
        if self.cooldown < 0:
            raise ValueError(f"cooldown must be >= 0 (got {self.cooldown})")

    def run(
        self,
        once: Callable[[], T],
        progress: ProgressFn | None = None,
        account: Callable[[T], tuple[int, str]] | None = None,
    ) -> tuple[list[T], float]:
        """What the timed calls of ``once`` returned, and the wall time of all calls (warm-up
        and cooldown included). ``progress`` hears of every call starting and ending; for a
        finished one, ``account`` says how many tokens it processed and how fast."""
        t0 = time.perf_counter()
        tokens = 0

        def step(phase: str, index: int, total: int) -> T:
            nonlocal tokens
            if progress is None:
                return once()
            progress(Progress(phase, index, total, finished=False))
            result = once()
            done, rate = account(result) if account is not None else (0, "")
            tokens += done
            progress(Progress(phase, index, total, finished=True, tokens=tokens, rate=rate))
            return result

        for i in range(self.warmup):
            step("warm-up", i + 1, self.warmup)
        results = []
        for i in range(self.repetitions):
            if self.cooldown and i:
                time.sleep(self.cooldown)
            results.append(step("repetition", i + 1, self.repetitions))
        return results, time.perf_counter() - t0


def derive_metrics(raw: RawSample, prompt_tokens: int) -> dict[str, float]:
    """The metrics of one repetition, from its timestamps."""
    ttft = raw.t_tokens[0] - raw.t_start
    decode = raw.t_tokens[-1] - raw.t_tokens[0]
    metrics = {
        "prompt_tps": prompt_tokens / ttft,
        "generation_tps": (raw.generated - 1) / decode,
        "ttft": ttft,
        "peak_memory": float(raw.peak_memory),
    }
    if raw.process_peak_memory is not None:
        metrics["process_peak_memory"] = float(raw.process_peak_memory)
    return metrics


# (resident before, resident after, swapped out after) of one repetition, in bytes
MemoryReading = tuple[int, int, int | None]


def memory_samples(readings: Sequence[MemoryReading]) -> dict[str, list[float]]:
    """``memory_growth`` of each repetition (see the module docstring), and ``swap_memory``
    where the process had any memory swapped out."""
    reference = readings[0][0]
    previous = reference
    growth = []
    for _, end, _ in readings:
        growth.append((end - previous) / reference)
        previous = end
    samples = {"memory_growth": growth}
    if any(swap for _, _, swap in readings):
        samples["swap_memory"] = [float(swap or 0) for _, _, swap in readings]
    return samples


def output_fingerprint(tokens: list[int]) -> str:
    """A short hash of greedy output: recorded with baselines, so that a change of behaviour
    (an early stop, different numerics) is reported beside a change of speed."""
    return hashlib.sha256(json.dumps(tokens).encode()).hexdigest()[:16]


def make_prompt(model: LoadedModel, workload: Workload) -> tuple[list[int], list[int]]:
    """(context, prompt) token ids: ``depth`` tokens already in the cache, then the timed
    prompt. Seeded random ids below the vocabulary size unless a prompt file is given."""
    need = workload.depth + workload.prompt_tokens
    if workload.prompt_file is not None:
        ids = model.tokenize(Path(workload.prompt_file).read_text(encoding="utf-8"))
        if len(ids) < need:
            raise MeasurementError(
                f"prompt_file {workload.prompt_file!r} has {len(ids)} tokens; the workload needs "
                f"{need} (depth {workload.depth} + prompt {workload.prompt_tokens})"
            )
    else:
        import numpy as np

        rng = np.random.default_rng(workload.seed)
        ids = rng.integers(0, model.vocab_size, size=need).tolist()
    return ids[: workload.depth], ids[workload.depth : need]


def measure(
    model: LoadedModel,
    workload: Workload,
    *,
    warmup: int = 1,
    repetitions: int = 5,
    cooldown: float = 0.0,
    progress: ProgressFn | None = None,
    tick_every: float = TICK_EVERY,
) -> Measurement:
    """Run ``warmup`` untimed repetitions of the same shape, then ``repetitions`` timed ones
    (each on a fresh KV cache), and derive the metric samples; ``progress`` hears of each, and
    of the work within each (``Tick``) every ``tick_every`` seconds at most."""
    protocol = Repetitions(warmup, repetitions, cooldown)
    model.check_workload(workload)
    context, prompt = make_prompt(model, workload)

    def once() -> RawSample:
        start, _ = model.memory_usage()
        ticks = Ticker(progress, tick_every) if progress is not None else None
        raw = model.run(prompt, context, workload, ticks)
        if raw.generated != workload.generation_tokens:
            raise MeasurementError(
                f"{model.backend} generated {raw.generated} tokens but "
                f"{workload.generation_tokens} were requested: a speed figure from a different "
                "amount of work would be false"
            )
        raw.resident_start = start
        raw.resident_end, raw.swap = model.memory_usage()
        return raw

    def account(raw: RawSample) -> tuple[int, str]:
        metrics = derive_metrics(raw, len(prompt))
        rate = (
            f"prompt {metrics['prompt_tps']:.1f} tok/s, "
            f"generation {metrics['generation_tps']:.1f} tok/s"
        )
        return len(prompt) + raw.generated, rate

    raws, wall_time = protocol.run(once, progress, account)
    per_rep = [derive_metrics(raw, len(prompt)) for raw in raws]
    samples = {name: [rep[name] for rep in per_rep] for name in per_rep[0]}
    samples.update(memory_samples([(r.resident_start, r.resident_end, r.swap) for r in raws]))
    return Measurement(
        fingerprint=output_fingerprint(raws[0].tokens) if workload.temp == 0 else None,
        backend=model.backend,
        model=model.identity,
        workload=workload,
        samples=samples,
        raw=raws,
        warmup=warmup,
        wall_time=wall_time,
        build=dict(model.build),
    )
