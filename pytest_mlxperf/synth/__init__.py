"""Synthetic models: random-weight decoder LLMs built offline for MLX and llama.cpp.

Why: performance tests need models, but nothing here may download weights, and the throughput of
random weights equals that of trained weights once the number of tokens is forced. The factory
builds a model of a named shape preset (``PRESETS``) or of explicit dimensions (``ModelShape``):

1. a Hugging Face folder (``config.json``, float32 safetensors, a real byte-level BPE tokenizer
   trained with ``tokenizers`` on generated text), the single source of all other formats;
2. an MLX folder made from it by ``mlx_lm.convert`` (fp32/fp16/bf16 or 2-8 bit affine);
3. a GGUF file written with the ``gguf`` package (F32/F16, with the layouts llama.cpp expects)
   and quantized by llama.cpp itself (``llama_model_quantize``: Q8_0, Q4_0, Q4_K_M, ...).

Each builder returns an ``Artifact``: the path, and whether this call built it or found it in
the cache (see ``cache`` for the key). ``build(backend, ...)`` is the one call by backend name
that the plugin uses. Modules: ``shapes`` (dimensions, presets), ``cache``, ``tokenizer``,
``hf``, ``mlx_convert``, ``gguf_convert``, ``cli`` (``mlxperf synth``), ``errors``.

Nothing heavy is imported at module import: mlx, mlx_lm, llama_cpp, gguf, numpy, safetensors and
tokenizers are imported inside the functions that need them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pytest_mlxperf.synth.cache import (
    CACHE_ENV,
    FACTORY_VERSION,
    Artifact,
    default_cache_dir,
    read_spec,
)
from pytest_mlxperf.synth.cli import add_parser, disk_size, human_size, run_cli
from pytest_mlxperf.synth.errors import SynthError
from pytest_mlxperf.synth.gguf_convert import build_gguf
from pytest_mlxperf.synth.hf import build_hf
from pytest_mlxperf.synth.mlx_convert import MLX_DTYPES, MLX_GROUP_SIZES, MLX_QUANTS, build_mlx
from pytest_mlxperf.synth.shapes import PRESETS, ModelShape
from pytest_mlxperf.synth.tokenizer import training_corpus

DEFAULT_QUANT = {"mlx": "4bit", "llamacpp": "Q4_K_M"}

__all__ = [
    "CACHE_ENV",
    "DEFAULT_QUANT",
    "FACTORY_VERSION",
    "MLX_DTYPES",
    "MLX_GROUP_SIZES",
    "MLX_QUANTS",
    "PRESETS",
    "Artifact",
    "ModelShape",
    "SynthError",
    "add_parser",
    "build",
    "build_gguf",
    "build_hf",
    "build_mlx",
    "default_cache_dir",
    "disk_size",
    "human_size",
    "read_spec",
    "run_cli",
    "training_corpus",
]


def build(backend: str, shape: str | ModelShape, quant: str | None = None, **kw: Any) -> Path:
    """The model's path for a backend ("mlx" or "llamacpp"); ``quant`` None means its default
    ("4bit" / "Q4_K_M"); keyword arguments go to build_mlx / build_gguf."""
    if backend == "mlx":
        return build_mlx(shape, quant or DEFAULT_QUANT["mlx"], **kw).path
    if backend == "llamacpp":
        return build_gguf(shape, quant or DEFAULT_QUANT["llamacpp"], **kw).path
    raise SynthError(f"unknown backend {backend!r}; use 'mlx' or 'llamacpp'")
