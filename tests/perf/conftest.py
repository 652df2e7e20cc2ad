"""The seed benchmark suites (``test_seed_*.py``): opt-in, and on which models and sizes.

They take minutes to hours, so they run only when selected, with ``-m seed`` or
``MLXPERF_SEED=1``; otherwise they are skipped, also by ``pytest --mlxperf tests/perf``.

Models: the real ones from the local Hugging Face cache when they are there, else synthetic
models of the same shape (never a download). Every size can be changed by an environment
variable, so that the suites run on a small machine too (a CPU, at a reduced prompt length);
each size is part of the workload's identity, so a baseline is only ever compared with a run of
the same sizes.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import pytest

from pytest_mlxperf.backends.sources import SourceError, resolve

SEED_ENV = "MLXPERF_SEED"
# float32 stands in for bf16 off macOS: float16/bfloat16 are many times slower on MLX's CPU
UNQUANTIZED = "bf16" if sys.platform == "darwin" else "fp32"


def _int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


@dataclass(frozen=True)
class Seed:
    """The seed suites' sizes and models, from the environment (defaults: the seed's own)."""

    # Llama-3.2-3B-Instruct 4-bit, a 32,160-token prompt, 1,000 tokens generated
    prompt_tokens: int = field(default_factory=lambda: _int("MLXPERF_SEED_PROMPT_TOKENS", 32160))
    generation_tokens: int = field(
        default_factory=lambda: _int("MLXPERF_SEED_GENERATION_TOKENS", 1000)
    )
    # llama.cpp layers on the GPU (-1: all, as the published figures were taken; no effect on
    # a CPU-only build)
    gpu_layers: int = field(default_factory=lambda: _int("MLXPERF_SEED_GPU_LAYERS", -1))
    # the synthetic stand-in's shape where the real model is not cached ("tiny": a quick check)
    shape: str = field(default_factory=lambda: os.environ.get("MLXPERF_SEED_SHAPE", "llama-3.2-3b"))
    # LoRA: sequence length and timed iterations (mlx-lm's defaults: batch 4, 16 layers)
    seq: int = field(default_factory=lambda: _int("MLXPERF_SEED_SEQ", 512))
    iterations: int = field(default_factory=lambda: _int("MLXPERF_SEED_ITERATIONS", 10))

    def candidates(self, kind: str) -> list[str]:
        """Real models for ``kind`` to look for in the local cache, first found wins."""
        env = os.environ.get
        return {
            "mlx": [env("MLXPERF_SEED_MLX_MODEL", "mlx-community/Llama-3.2-3B-Instruct-4bit")],
            "llamacpp": [
                env(
                    "MLXPERF_SEED_GGUF",
                    "bartowski/Llama-3.2-3B-Instruct-GGUF:Llama-3.2-3B-Instruct-Q4_K_M.gguf",
                ),
                "unsloth/Llama-3.2-3B-Instruct-GGUF:Llama-3.2-3B-Instruct-Q4_K_M.gguf",
                "hugging-quants/Llama-3.2-3B-Instruct-Q4_K_M-GGUF:llama-3.2-3b-instruct-q4_k_m.gguf",
            ],
            # the unquantized base of the LoRA levers (bf16, as published)
            "mlx-unquantized": [
                env("MLXPERF_SEED_MLX_UNQUANTIZED", "mlx-community/Llama-3.2-3B-Instruct")
            ],
        }[kind]

    def model(self, kind: str) -> str:
        """The model for ``kind`` ("mlx", "llamacpp", "mlx-unquantized"): the real one when it
        is cached, else the synthetic shape."""
        backend = kind.split("-")[0]
        for source in self.candidates(kind):
            try:
                resolve(backend, source)
            except SourceError:
                continue
            return source
        quant = {"mlx": "4bit", "llamacpp": "Q4_K_M", "mlx-unquantized": UNQUANTIZED}[kind]
        return f"synth:{self.shape}@{quant}"


@pytest.fixture(scope="session")
def seed() -> Seed:
    """The seed suites' sizes and models (see ``Seed``)."""
    return Seed()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"seed: the seed benchmark suites; run them with -m seed (or {SEED_ENV}=1)"
    )


def seed_selected(config: pytest.Config) -> bool:
    """Whether this run asked for the seed suites: ``-m`` naming them, or the variable."""
    return "seed" in (config.getoption("markexpr") or "") or bool(os.environ.get(SEED_ENV))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if seed_selected(config):
        return
    skip = pytest.mark.skip(reason=f"seed benchmark: select it with -m seed (or {SEED_ENV}=1)")
    for item in items:
        if item.get_closest_marker("seed") is not None:
            item.add_marker(skip)
