"""MLX models: the Hugging Face folder converted by ``mlx_lm.convert``.

The conversion is mlx-lm's own, so a synthetic model is laid out, quantized and loaded exactly
like a published mlx-community one (fp32/fp16/bf16, or 2-8 bit affine with group size 32/64/128).
The combination is checked first because mlx-lm would silently leave layers whose rows do not
split into groups unquantized, and the result would not be what its name says.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

from pytest_mlxperf.synth.cache import Artifact, materialize, model_spec
from pytest_mlxperf.synth.errors import SynthError, require
from pytest_mlxperf.synth.hf import build_hf
from pytest_mlxperf.synth.shapes import ModelShape, resolve_shape

MLX_QUANTS = ("fp32", "fp16", "bf16", "2bit", "3bit", "4bit", "5bit", "6bit", "8bit")
MLX_DTYPES = ("float32", "float16", "bfloat16")
MLX_GROUP_SIZES = (32, 64, 128)


def _mlx_settings(
    model: ModelShape, quant: str, group_size: int, dtype: str
) -> tuple[int | None, str]:
    """(bits or None, dtype) for an MLX quantization name, after checking the combination."""
    name = quant.lower()
    if name not in MLX_QUANTS:
        raise SynthError(f"unknown MLX quantization {quant!r}; use one of {', '.join(MLX_QUANTS)}")
    if name in ("fp32", "fp16", "bf16"):
        return None, {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}[name]
    if dtype not in MLX_DTYPES:
        raise SynthError(f"unknown MLX dtype {dtype!r}; use one of {', '.join(MLX_DTYPES)}")
    if group_size not in MLX_GROUP_SIZES:
        raise SynthError(f"MLX group size must be one of {MLX_GROUP_SIZES}, not {group_size}")
    for dim, rows in model.row_sizes().items():
        if rows % group_size:  # mlx_lm would silently leave such layers unquantized
            raise SynthError(f"{dim}={rows} is not a multiple of the MLX group size {group_size}")
    return int(name.removesuffix("bit")), dtype


def build_mlx(
    shape: str | ModelShape,
    quant: str = "4bit",
    *,
    group_size: int = 64,
    dtype: str = "float32",
    seed: int = 0,
    cache_dir: Path | None = None,
) -> Artifact:
    """Build (or reuse) an MLX model folder loadable by ``mlx_lm.load``.

    ``quant``: "fp32", "fp16", "bf16" (all weights in that dtype) or "2bit".."8bit" (affine,
    ``group_size`` 32/64/128). For quantized models ``dtype`` is the type of every tensor that
    is not quantized (norms, scales, biases); it defaults to float32 because float16 runs ~20x
    slower on MLX's CPU backend. The dtype is part of the model's identity (cache key).
    """
    label, model = resolve_shape(shape)
    bits, dtype = _mlx_settings(model, quant, group_size, dtype)
    spec = model_spec("mlx", model, seed, quant=quant.lower(), dtype=dtype)
    if bits is not None:
        spec["group_size"] = group_size

    def build(tmp: Path) -> list[str]:
        convert = require("mlx_lm.convert", "mlx").convert
        hf = build_hf(model, seed=seed, cache_dir=cache_dir).path
        with contextlib.redirect_stdout(io.StringIO()):  # mlx_lm prints [INFO] progress lines
            convert(
                str(hf),
                str(tmp),
                quantize=bits is not None,
                q_group_size=group_size,
                q_bits=bits,
                dtype=dtype,
            )
        # convert() re-saves the tokenizer through the installed transformers, whose format
        # (transformers 5: "TokenizersBackend") older mlx-lm releases cannot read; the factory's
        # own files load everywhere, so a cached model serves a whole matrix of versions
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(hf / name, tmp / name)
        return sorted(p.name for p in tmp.glob("*.safetensors"))

    return materialize(cache_dir, label, spec, build, ("mlx", "mlx-lm"))
