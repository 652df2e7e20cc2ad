"""The Hugging Face folder of a synthetic model: the single source of every other format.

``config.json``, float32 safetensors of seeded random weights and the trained tokenizer, laid
out as on the Hub, so that ``mlx_lm.convert`` makes the MLX model from it exactly as from a
published one and the GGUF writer reads the same tensors. The weights are drawn from one seeded
stream in one order, so a spec always gives the same bytes, and written shard by shard so that
real-size shapes fit in memory.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pytest_mlxperf.synth.cache import Artifact, materialize, model_spec
from pytest_mlxperf.synth.errors import require
from pytest_mlxperf.synth.shapes import ModelShape, resolve_shape
from pytest_mlxperf.synth.tokenizer import write_tokenizer

_SHARD_BYTES = 2 * 1024**3  # HF safetensors shard size: bounds memory while writing big shapes
_INIT_STD = 0.02  # weights and embeddings: activations stay finite, logits are not degenerate
_NORM_STD = 0.1  # norms are 1 + N(0, 0.1), biases N(0, 0.1): a dropped one shows in the logits


def _random_tensors(shape: ModelShape, seed: int) -> Iterator[tuple[str, Any]]:
    """(name, float32 array) one at a time, always drawn from one seeded stream in one order."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for name, dims in shape.tensor_shapes().items():
        tensor = rng.standard_normal(dims, dtype=np.float32)
        if name.endswith("norm.weight"):
            tensor *= np.float32(_NORM_STD)
            tensor += np.float32(1.0)
        else:
            tensor *= np.float32(_NORM_STD if name.endswith(".bias") else _INIT_STD)
        yield name, tensor


def _write_hf(folder: Path, shape: ModelShape, seed: int) -> list[str]:
    """Write the Hugging Face folder; weights go out shard by shard to bound memory."""
    save_file = require("safetensors.numpy", "synth").save_file
    folder.mkdir(parents=True)
    shards: list[list[str]] = [[]]
    size = 0
    for name, dims in shape.tensor_shapes().items():
        nbytes = 4 * math.prod(dims)
        if shards[-1] and size + nbytes > _SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    files = (
        ["model.safetensors"]
        if len(shards) == 1
        else [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
    )
    tensors = _random_tensors(shape, seed)
    weight_map = {}
    for file, names in zip(files, shards, strict=True):
        shard = dict(next(tensors) for _ in names)
        save_file(shard, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    if len(files) > 1:
        index = {"metadata": {"total_size": 4 * shape.param_count()}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (folder / "config.json").write_text(json.dumps(shape.hf_config(), indent=2) + "\n")
    write_tokenizer(folder, shape)
    return files


def build_hf(shape: str | ModelShape, *, seed: int = 0, cache_dir: Path | None = None) -> Artifact:
    """Build (or reuse) the float32 Hugging Face folder of a shape: the source of every format."""
    label, model = resolve_shape(shape)
    return materialize(
        cache_dir,
        label,
        model_spec("hf", model, seed),
        lambda tmp: _write_hf(tmp, model, seed),
        ("numpy", "safetensors", "tokenizers"),
    )
