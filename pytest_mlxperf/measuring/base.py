"""The small interface every backend implements, and the records it produces: the raw record
of one repetition, and the ``Measurement`` of many (which a backend returns itself for what only
it can measure, such as MLX fine-tuning)."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from pytest_mlxperf.host import memory
from pytest_mlxperf.measuring.progress import ProgressFn, Ticker
from pytest_mlxperf.measuring.workload import FinetuneWorkload, Workload, WorkloadLike


class BackendError(RuntimeError):
    """A backend failed, or cannot do what was asked; the message says which and why."""


@dataclass
class RawSample:
    """Timestamps (``time.perf_counter`` seconds) and counts of one timed repetition.

    ``t_tokens[i]`` is when generated token ``i`` was ready (synchronized), so ``t_tokens[0]``
    is the first token and metrics are derived from these, never from backend summaries.
    ``process_peak_memory`` is the measuring process's peak where the backend's own
    ``peak_memory`` is something else (MLX: its allocator peak). ``resident_start`` /
    ``resident_end`` / ``swap`` are the process's memory before and after the repetition
    (``LoadedModel.memory_usage``), filled in by the protocol, outside the timed region.
    """

    t_start: float
    t_tokens: list[float]
    t_end: float
    tokens: list[int]
    peak_memory: int
    backend_counters: dict[str, float] = field(default_factory=dict)
    process_peak_memory: int | None = None
    resident_start: int | None = None
    resident_end: int | None = None
    swap: int | None = None

    @property
    def generated(self) -> int:
        return len(self.tokens)


@dataclass
class Measurement:
    """Everything one measurement produced: identity, per-repetition metric samples, the raw
    records they were derived from, and notes on what it could not measure or had to assume
    (shown with the result)."""

    backend: str
    model: dict[str, Any]
    workload: WorkloadLike
    samples: dict[str, list[float]]
    raw: list[Any] = field(repr=False)
    warmup: int = 0
    wall_time: float = 0.0
    fingerprint: str | None = None
    notes: list[str] = field(default_factory=list)
    # what the loaded libraries report of their build, per package (``LoadedModel.build``)
    build: dict[str, Any] = field(default_factory=dict)


# the backend of a timed callable's measurement, which has no model: its key is its workload's
CALLABLE = "callable"


def measurement_key(
    backend: str, model_name: str, workload_label: str, name: str | None = None
) -> str:
    """A measurement's key within its test, as baselines and results files store it: the name
    the test gave it, else backend, model and workload (``mlx:synth:tiny:pp128+tg64``); a timed
    callable's is its workload's label (``call:NAME``)."""
    if name:
        return name
    return workload_label if backend == CALLABLE else f"{backend}:{model_name}:{workload_label}"


class LoadedModel(abc.ABC):
    """A model loaded by one backend, ready to run repetitions of a workload."""

    backend: str
    identity: dict[str, Any]
    load_time: float
    vocab_size: int
    context_length: int
    # what the loaded library reports of its build, per package (provenance, like a version):
    # llama.cpp's features and where the weights went (``llamacpp_build``)
    build: Mapping[str, Any] = MappingProxyType({})

    @abc.abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text``, without BOS (used for prompts read from a file)."""

    @abc.abstractmethod
    def run(
        self,
        prompt: list[int],
        context: list[int],
        workload: Workload,
        ticks: Ticker | None = None,
    ) -> RawSample:
        """One repetition on a fresh KV cache: prefill ``context`` (untimed: the context
        depth), then time the prefill of ``prompt`` and the decode of exactly
        ``workload.generation_tokens`` tokens with EOS disabled. ``ticks`` hears of the work as
        it goes: after each prefill chunk and each token (it throttles itself)."""

    def finetune(
        self,
        workload: FinetuneWorkload,
        warmup: int,
        repetitions: int,
        progress: ProgressFn | None = None,
    ) -> Measurement:
        """An optional capability: ``warmup`` untimed, then ``repetitions`` timed LoRA
        fine-tuning runs of ``workload`` on this model (``progress`` hears of each). Backends
        that cannot fine-tune keep this default, which refuses with the reason."""
        raise BackendError(f"fine-tuning is measured with MLX only, not {self.backend!r}")

    def memory_usage(self) -> tuple[int, int | None]:
        """(resident, swapped out) bytes of the process the model runs in, now
        (``memory.usage``; swap ``None`` where the OS does not report it)."""
        return memory.usage()

    def close(self) -> None:  # noqa: B027 - optional hook, most backends free on GC
        """Release the model's memory."""

    def check_workload(self, workload: Workload) -> None:
        """Reject a workload this model cannot run, before anything is timed."""
        limit = min(self.context_length, workload.max_kv_size or self.context_length)
        if workload.total_tokens > limit:
            raise BackendError(
                f"workload {workload.label} needs {workload.total_tokens} tokens of context "
                f"(depth {workload.depth} + prompt {workload.prompt_tokens} + generation "
                f"{workload.generation_tokens}), but the model's context / max KV size is {limit}"
            )
