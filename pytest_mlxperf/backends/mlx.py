"""The MLX backend: ``mlx_lm.load`` and ``mlx_lm.generate.generate_step``.

``generate_step`` is used directly rather than ``stream_generate`` because it does not stop at
EOS: the amount of work must not depend on what the model says. Peak memory is MLX's own
allocator peak, reset before each repetition; beside it, the process's peak
(``process_peak_memory``: Linux VmHWM, macOS physical footprint), which also counts what the
allocator does not see (its buffer cache, the Python heap, other libraries).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pytest_mlxperf.backends import mlx_memory
from pytest_mlxperf.backends.finetune import measure_finetune
from pytest_mlxperf.backends.sources import ResolvedSource
from pytest_mlxperf.host import memory
from pytest_mlxperf.measuring.base import BackendError, LoadedModel, Measurement, RawSample
from pytest_mlxperf.measuring.progress import ProgressFn, Ticker
from pytest_mlxperf.measuring.workload import FinetuneWorkload, Workload

LLAMACPP_ONLY = ("flash_attn", "threads", "n_gpu_layers")


def quantization(config: dict[str, Any]) -> dict[str, Any] | None:
    """An MLX model's quantization from its config.json (bits, group size), as its identity
    records it; ``None`` for an unquantized model. Also read for a started mlx_lm.server."""
    quant = config.get("quantization") or config.get("quantization_config")
    return {"bits": quant.get("bits"), "group_size": quant.get("group_size")} if quant else None


class MLXModel(LoadedModel):
    backend = "mlx"

    def __init__(self, resolved: ResolvedSource) -> None:
        import mlx.core as mx
        from mlx.utils import tree_flatten
        from mlx_lm import load

        self._mx = mx
        t0 = time.perf_counter()
        self.model, self.tokenizer = load(str(resolved.path))
        self.load_time = time.perf_counter() - t0
        config = json.loads((Path(resolved.path) / "config.json").read_text())
        self.vocab_size = int(config["vocab_size"])
        self.context_length = int(config.get("max_position_embeddings", 1 << 20))
        dtypes = sorted({str(p.dtype) for _, p in tree_flatten(self.model.parameters())})
        self.identity = resolved.identity(
            "mlx",
            quantization=quantization(config),
            dtypes=dtypes,
        )

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def run(
        self,
        prompt: list[int],
        context: list[int],
        workload: Workload,
        ticks: Ticker | None = None,
    ) -> RawSample:
        set_fields = [f for f in LLAMACPP_ONLY if getattr(workload, f) is not None]
        if set_fields:
            raise BackendError(
                f"workload option(s) {', '.join(set_fields)} apply to llama.cpp only"
            )
        mx = self._mx
        from mlx_lm.generate import generate_step, wired_limit
        from mlx_lm.models.cache import make_prompt_cache
        from mlx_lm.sample_utils import make_sampler

        step = workload.prefill_step or 2048
        cache = make_prompt_cache(self.model, max_kv_size=workload.max_kv_size)
        sampler = make_sampler(
            temp=workload.temp, top_p=workload.top_p if workload.top_p < 1 else 0.0
        )
        mx.random.seed(workload.seed)
        mlx_memory.reset_peak(mx)
        memory.reset_peak()
        with wired_limit(self.model):
            t_context = time.perf_counter()
            for i in range(0, len(context), step):
                self.model(mx.array(context[i : i + step])[None], cache=cache)
                mx.eval([c.state for c in cache])
                if ticks is not None:
                    done = min(i + step, len(context))
                    ticks.prefilled("context", done, len(context), t_context)
            tokens: list[int] = []
            stamps: list[float] = []
            # mlx-lm calls it after each chunk is evaluated (synchronized): the count is real
            prompt_done = (
                None
                if ticks is None
                else lambda done, total: ticks.prefilled("prompt", done, total, t_start)
            )
            t_start = time.perf_counter()
            for token, _ in generate_step(
                mx.array(prompt),
                self.model,
                max_tokens=workload.generation_tokens,
                sampler=sampler,
                prompt_cache=cache,
                prefill_step_size=step,
                prompt_progress_callback=prompt_done,
            ):
                stamps.append(time.perf_counter())
                tokens.append(int(token))
                if ticks is not None:
                    ticks.generated(stamps, workload.generation_tokens)
            t_end = time.perf_counter()
        return RawSample(
            t_start, stamps, t_end, tokens, mlx_memory.peak(mx), process_peak_memory=memory.peak()
        )

    def finetune(
        self,
        workload: FinetuneWorkload,
        warmup: int,
        repetitions: int,
        progress: ProgressFn | None = None,
    ) -> Measurement:
        """A LoRA (QLoRA on a quantized model) fine-tuning measurement with mlx-lm's trainer
        (see ``pytest_mlxperf.backends.finetune``)."""
        return measure_finetune(
            self.model,
            self.tokenizer,
            workload,
            warmup=warmup,
            repetitions=repetitions,
            identity=self.identity,
            progress=progress,
        )

    def close(self) -> None:
        del self.model
        self._mx.clear_cache()


def load(resolved: ResolvedSource) -> MLXModel:
    return MLXModel(resolved)
