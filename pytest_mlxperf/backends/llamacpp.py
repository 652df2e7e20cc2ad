"""The llama.cpp backend, through llama-cpp-python.

Each repetition runs on an emptied KV cache (``Llama.reset()`` alone keeps the cells, and
``Llama.generate`` would silently reuse a matching prefix), evaluates the prompt once with
``Llama.eval`` and then one token at a time, so what is timed is exactly one prefill and
``generation_tokens - 1`` decodes. llama.cpp's own perf counters are kept beside our
timestamps to check them. Context size, batch size, flash attention, threads and GPU layers
are context settings in llama.cpp: the ``Llama`` object is rebuilt when a workload changes them.

Threads default to one explicit number for both prompt and decode (``default_threads``), as
llama-bench does, never to llama-cpp-python's split of half the cores for decode and all of
them for the prompt, which stalls the prompt whenever one core is busy. That default is part of
the model's identity, so a baseline is never compared across thread counts.

Weight repacking (``repack``) is llama.cpp's ``use_extra_bufts``: on by default, as users run
it; turned off, the weights stay as the file has them (llama-server's ``--no-repack``), which
avoids the AMX crash of ``llamacpp_build.crash_diagnosis``. Off, it is part of the identity.
What the loaded library says of its build, and where the weights went, is the model's
``build`` (provenance).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from pytest_mlxperf.backends.llamacpp_build import PACKAGE, buffer_types, build_facts
from pytest_mlxperf.backends.sources import ResolvedSource
from pytest_mlxperf.host import cpus, memory
from pytest_mlxperf.measuring.base import BackendError, LoadedModel, RawSample
from pytest_mlxperf.measuring.progress import Ticker
from pytest_mlxperf.measuring.workload import Workload

DEFAULT_N_BATCH = 512


def default_threads(cores: frozenset[int] | None = None) -> int:
    """Threads for prompt and decode when a workload sets none: one per physical core but
    one (logical cores where the physical count is unknown), at least one, and no more than
    the process may run on: ``cores``, else this process's own (``cpus.allowed``: a worker
    confined by ``--mlxperf-cpus``, a container's cpuset).

    Not llama-bench's every core: with every core busy, whatever else runs (the harness,
    the OS) stalls llama.cpp's threads now and then. On this project's 2-core machine,
    8 processes each: 1 thread spread 0.8% (prompt) and 1.3% (decode) between processes, 2
    threads 17% (one process in eight lost a third of its speed)."""
    import psutil

    physical = psutil.cpu_count(logical=False) or os.cpu_count() or 1
    usable = cores if cores is not None else cpus.allowed()
    threads = max(1, physical - 1)
    return min(threads, len(usable)) if usable else threads


def can_turn_repacking_off() -> bool:
    """Whether the installed llama-cpp-python's llama.cpp has ``use_extra_bufts`` (releases
    before mid-2025, such as 0.3.10, do not: they cannot load without repacking)."""
    import llama_cpp.llama_cpp as lib

    return "use_extra_bufts" in {name for name, *_ in lib.llama_model_params._fields_}


@contextlib.contextmanager
def repacking(repack: bool | None) -> Iterator[None]:
    """Weight repacking on or off for the models llama-cpp-python loads inside (``None``:
    llama.cpp's default, on). ``Llama(...)`` has no argument for it: it builds its model
    parameters from ``llama_model_default_params()``, which is wrapped for the time inside."""
    settable = repack is not None and can_turn_repacking_off()
    if repack is False and not settable:
        raise BackendError(
            "this llama-cpp-python's llama.cpp has no use_extra_bufts: weight repacking cannot "
            'be turned off; pip install -U "llama-cpp-python"'
        )
    if not settable:  # llama.cpp's default, or on where it cannot be anything else
        yield
        return
    import llama_cpp.llama_cpp as lib

    original = lib.llama_model_default_params

    def params() -> Any:
        p = original()
        p.use_extra_bufts = repack
        return p

    lib.llama_model_default_params = params
    try:
        yield
    finally:
        lib.llama_model_default_params = original


@contextlib.contextmanager
def captured_log() -> Iterator[list[str]]:
    """llama.cpp's log while inside, as lines (the load log says where the weights went);
    errors still reach stderr, as llama-cpp-python's own handler prints them. Its handler is
    put back afterwards."""
    import ctypes

    import llama_cpp._logger as own
    import llama_cpp.llama_cpp as lib

    chunks: list[str] = []
    lines: list[str] = []

    @lib.llama_log_callback  # type: ignore[misc]
    def keep(level: int, text: bytes, _: Any) -> None:
        chunk = text.decode("utf-8", errors="replace")
        chunks.append(chunk)
        if level == 3:  # GGML_LOG_LEVEL_ERROR
            print(chunk, end="", file=sys.stderr)

    lib.llama_log_set(keep, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        lib.llama_log_set(own.llama_log_callback, ctypes.c_void_p(0))
        lines += "".join(chunks).splitlines()


def system_info() -> str:
    """The loaded llama.cpp's feature line (``CPU : SSE3 = 1 | AVX2 = 1 | ...``)."""
    import llama_cpp

    return bytes(llama_cpp.llama_print_system_info()).decode("utf-8", errors="replace")


def _settings(workload: Workload | None, threads: int) -> tuple[Any, ...]:
    """The ``Llama(...)`` arguments a workload fixes: (n_ctx, n_batch, flash_attn, threads,
    n_gpu_layers). Unset values are explicit defaults (``threads`` for the thread count),
    never llama-cpp-python's silent ones."""
    if workload is None:
        return (512, DEFAULT_N_BATCH, False, threads, 0)
    n_ctx = workload.max_kv_size or workload.total_tokens
    return (
        n_ctx,
        workload.prefill_step or DEFAULT_N_BATCH,
        bool(workload.flash_attn),
        workload.threads or threads,
        workload.n_gpu_layers or 0,
    )


def _prefill(llm: Any, tokens: list[int], stage: str, ticks: Ticker | None) -> None:
    """``llm.eval(tokens)``, one batch of ``n_batch`` tokens per call (the batches
    ``Llama.eval`` makes itself), so that ``ticks`` hears after each batch. The same calls run
    with or without ``ticks``: the timed work does not depend on whether progress is shown."""
    since = time.perf_counter()
    for i in range(0, len(tokens), llm.n_batch):
        llm.eval(tokens[i : i + llm.n_batch])
        if ticks is not None:
            ticks.prefilled(stage, min(i + llm.n_batch, len(tokens)), len(tokens), since)


class LlamaCppModel(LoadedModel):
    backend = "llamacpp"

    def __init__(self, resolved: ResolvedSource, repack: bool | None = None) -> None:
        self._path = str(resolved.path)
        self._llama: Any = None
        self._key: tuple[Any, ...] | None = None
        self.repack = repack
        self.threads = default_threads()
        with captured_log() as log:
            t0 = time.perf_counter()
            llm = self._instance(None)
            self.load_time = time.perf_counter() - t0
        self.build = {PACKAGE: build_facts(system_info(), buffer_types(log))}
        meta = llm.metadata
        arch = meta.get("general.architecture", "")
        self.vocab_size = llm.n_vocab()
        self.context_length = int(meta.get(f"{arch}.context_length", llm._model.n_ctx_train()))
        self.identity = resolved.identity(
            "llamacpp",
            quantization=llm._model.desc(),
            file_type=meta.get("general.file_type"),
            default_threads=self.threads,  # what runs a workload that sets no threads
            **({"repack": False} if repack is False else {}),
        )

    def _instance(self, workload: Workload | None) -> Any:
        key = _settings(workload, self.threads)
        if key != self._key:
            from llama_cpp import Llama

            n_ctx, n_batch, flash_attn, threads, n_gpu_layers = key
            self._llama = None  # free the old context before allocating the new one
            try:
                with repacking(self.repack):
                    self._llama = Llama(
                        model_path=self._path,
                        n_ctx=n_ctx,
                        n_batch=n_batch,
                        n_ubatch=n_batch,
                        flash_attn=flash_attn,
                        n_threads=threads,
                        n_threads_batch=threads,
                        n_gpu_layers=n_gpu_layers,
                        verbose=False,
                    )
            except ValueError as exc:
                raise BackendError(f"llama.cpp could not load {self._path}: {exc}") from exc
            self._key = key
        return self._llama

    def tokenize(self, text: str) -> list[int]:
        return self._instance(None).tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def run(
        self,
        prompt: list[int],
        context: list[int],
        workload: Workload,
        ticks: Ticker | None = None,
    ) -> RawSample:
        import llama_cpp

        llm = self._instance(workload)
        llm.reset()
        llm._ctx.kv_cache_clear()
        llm.set_seed(workload.seed)
        sample_args = {
            "temp": workload.temp,
            "top_p": workload.top_p,
            "top_k": 0,
            "min_p": 0.0,
            "repeat_penalty": 1.0,
        }
        memory.reset_peak()
        _prefill(llm, context, "context", ticks)
        llama_cpp.llama_perf_context_reset(llm.ctx)
        tokens: list[int] = []
        stamps: list[float] = []
        t_start = time.perf_counter()
        _prefill(llm, prompt, "prompt", ticks)
        # sampling reads the logits, which synchronizes with the backend: the stamp is real
        token = llm.sample(**sample_args)
        stamps.append(time.perf_counter())
        tokens.append(token)
        for _ in range(workload.generation_tokens - 1):
            llm.eval([token])
            token = llm.sample(**sample_args)
            stamps.append(time.perf_counter())
            tokens.append(token)
            if ticks is not None:
                ticks.generated(stamps, workload.generation_tokens)
        t_end = time.perf_counter()
        perf = llama_cpp.llama_perf_context(llm.ctx)
        counters = {
            name: float(getattr(perf, name))
            for name in ("t_p_eval_ms", "n_p_eval", "t_eval_ms", "n_eval")
        }
        peak = memory.peak()  # the process peak is llama.cpp's only figure: both metrics
        return RawSample(t_start, stamps, t_end, tokens, peak, counters, process_peak_memory=peak)

    def close(self) -> None:
        if self._llama is not None:
            self._llama.close()
        self._llama = None
        self._key = None


def load(resolved: ResolvedSource, repack: bool | None = None) -> LlamaCppModel:
    return LlamaCppModel(resolved, repack)
