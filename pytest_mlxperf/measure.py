"""The measurement protocol: prompt, warm-up, timed repetitions, metrics from raw timestamps.

Independent of pytest, so the CLI and other harnesses can use it.

Definitions (per repetition):
- ``ttft`` = time from the start of prompt processing to the first generated token being ready;
- ``prompt_tps`` = prompt tokens / ``ttft`` (mlx-lm's convention);
- ``generation_tps`` = (generated - 1) / (t_last - t_first): steady decode, the first token
  (which belongs to the prefill) excluded;
- ``peak_memory`` = the backend's peak for that repetition alone (reset before it).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pytest_mlxperf.backends.base import LoadedModel, Measurement, RawSample
from pytest_mlxperf.workload import Workload

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

    def run(self, once: Callable[[], T]) -> tuple[list[T], float]:
        """What the timed calls of ``once`` returned, and the wall time of all calls (warm-up
        and cooldown included)."""
        t0 = time.perf_counter()
        for _ in range(self.warmup):
            once()
        results = []
        for i in range(self.repetitions):
            if self.cooldown and i:
                time.sleep(self.cooldown)
            results.append(once())
        return results, time.perf_counter() - t0


def derive_metrics(raw: RawSample, prompt_tokens: int) -> dict[str, float]:
    """The metrics of one repetition, from its timestamps."""
    ttft = raw.t_tokens[0] - raw.t_start
    decode = raw.t_tokens[-1] - raw.t_tokens[0]
    return {
        "prompt_tps": prompt_tokens / ttft,
        "generation_tps": (raw.generated - 1) / decode,
        "ttft": ttft,
        "peak_memory": float(raw.peak_memory),
    }


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
) -> Measurement:
    """Run ``warmup`` untimed repetitions of the same shape, then ``repetitions`` timed ones
    (each on a fresh KV cache), and derive the metric samples."""
    protocol = Repetitions(warmup, repetitions, cooldown)
    model.check_workload(workload)
    context, prompt = make_prompt(model, workload)

    def once() -> RawSample:
        raw = model.run(prompt, context, workload)
        if raw.generated != workload.generation_tokens:
            raise MeasurementError(
                f"{model.backend} generated {raw.generated} tokens but "
                f"{workload.generation_tokens} were requested: a speed figure from a different "
                "amount of work would be false"
            )
        return raw

    raws, wall_time = protocol.run(once)
    per_rep = [derive_metrics(raw, len(prompt)) for raw in raws]
    samples = {name: [rep[name] for rep in per_rep] for name in per_rep[0]}
    return Measurement(
        fingerprint=output_fingerprint(raws[0].tokens) if workload.temp == 0 else None,
        backend=model.backend,
        model=model.identity,
        workload=workload,
        samples=samples,
        raw=raws,
        warmup=warmup,
        wall_time=wall_time,
    )


@dataclass(frozen=True)
class CallableWorkload:
    """A user's own callable (a whole pipeline that uses a model) as a workload. Its identity
    is its name: give the measurement a new name when what it does changes."""

    name: str

    @property
    def label(self) -> str:
        return f"call:{self.name}"

    def identity(self) -> dict[str, Any]:
        return {"callable": self.name}


def time_callable(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    name: str,
    *,
    warmup: int = 1,
    repetitions: int = 5,
    cooldown: float = 0.0,
) -> Measurement:
    """Call ``fn`` ``warmup`` times untimed, then ``repetitions`` times timed: the ``duration``
    metric, end to end, as pytest-benchmark's fixture times a callable."""

    def once() -> float:
        start = time.perf_counter()
        fn(*args, **kwargs)
        return time.perf_counter() - start

    durations, wall_time = Repetitions(warmup, repetitions, cooldown).run(once)
    return Measurement(
        backend="callable",
        model={"name": name},
        workload=CallableWorkload(name),
        samples={"duration": durations},
        raw=[],
        warmup=warmup,
        wall_time=wall_time,
    )
