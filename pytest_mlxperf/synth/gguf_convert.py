"""GGUF files for llama.cpp: written from the Hugging Face folder, quantized by llama.cpp itself.

F32 and F16 files are written with the ``gguf`` package the way llama.cpp's
``convert_hf_to_gguf.py`` writes them (tensor names, rotary permutation for llama, rope_freqs for
Llama 3 rope scaling, tokenizer metadata), streaming one tensor at a time; every other type
(Q8_0, Q4_0, Q4_K_M, ...) is made from the F32 file by ``llama_model_quantize``, the code of
``llama-quantize``, so a synthetic file has the bytes a published one of that type would have.
A quantization whose blocks do not divide every matrix row is refused before anything is built,
because llama.cpp would abort or silently substitute another type.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from pytest_mlxperf.synth.cache import Artifact, materialize, model_spec
from pytest_mlxperf.synth.errors import SynthError, require
from pytest_mlxperf.synth.hf import build_hf
from pytest_mlxperf.synth.shapes import TOKENIZER_STYLES, ModelShape, resolve_shape


def _gguf_ftype(quant: str) -> tuple[str, int]:
    """Canonical name and llama_ftype value of a GGUF quantization ("q4_k_m",
    "LLAMA_FTYPE_MOSTLY_Q4_K_M" and "Q4_K_M" are the same)."""
    gguf = require("gguf", "synth")
    name = quant.upper().removeprefix("LLAMA_FTYPE_")
    names = {m.name.split("_", 1)[1]: m for m in gguf.LlamaFileType if m.name != "GUESSED"}
    ftype = names.get(name.removeprefix("MOSTLY_").removeprefix("ALL_"))
    if ftype is None:
        raise SynthError(f"unknown GGUF quantization {quant!r}; use one of {', '.join(names)}")
    return ftype.name.split("_", 1)[1], int(ftype)


def _gguf_block_size(name: str) -> int:
    """Row block size of the main ggml type of a file type (Q4_K_M -> Q4_K -> 256)."""
    gguf = require("gguf", "synth")
    types = gguf.GGMLQuantizationType.__members__
    parts = name.split("_")
    for n in range(len(parts), 0, -1):
        if "_".join(parts[:n]) in types:
            return gguf.GGML_QUANT_SIZES[types["_".join(parts[:n])]][0]
    return 256  # the IQ*_M mixes, built from 256-wide i-quants


def _check_gguf_rows(model: ModelShape, name: str, allow_fallback: bool) -> bool:
    """Refuse a quantization llama.cpp cannot apply to every matrix of this shape.

    With rows that are no multiple of the block size, llama.cpp either aborts or (K-quants)
    silently substitutes another type for those tensors, so the file would not be what its name
    says. Returns whether such a fallback was allowed (it then changes the identity)."""
    block = _gguf_block_size(name)
    bad = {dim: rows for dim, rows in model.row_sizes().items() if rows % block}
    if not bad:
        return False
    tensors = {
        "hidden_size": "token_embd, blk.*.attn_q/attn_k/attn_v/ffn_gate/ffn_up",
        "intermediate_size": "blk.*.ffn_down",
        "num_attention_heads*head_dim": "blk.*.attn_output",
    }
    detail = "; ".join(f"{dim}={rows} (rows of {tensors[dim]})" for dim, rows in bad.items())
    if block == 256 and allow_fallback and all(rows % 32 == 0 for rows in bad.values()):
        return True
    hint = (
        "; pass allow_fallback=True (--allow-fallback) to accept llama.cpp's substitute types "
        "for those tensors, as published files of such shapes do"
        if block == 256
        else ""
    )
    raise SynthError(
        f"{name} needs every matrix row to be a multiple of {block} values, which {detail} "
        f"{'is' if len(bad) == 1 else 'are'} not{hint}"
    )


def _gguf_tokenizer(writer: Any, gguf: ModuleType, hf: Path, model: ModelShape) -> None:
    """Tokenizer metadata from the HF tokenizer.json, as convert_hf_to_gguf.py writes it."""
    content = json.loads((hf / "tokenizer.json").read_text("utf-8"))
    style = TOKENIZER_STYLES[model.arch]
    tokens = sorted(content["model"]["vocab"], key=content["model"]["vocab"].__getitem__)
    special = {t["id"] for t in content["added_tokens"] if t["special"]}
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(style.gguf_pre)
    writer.add_token_list(tokens)
    writer.add_token_types(
        [
            gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
            for i in range(len(tokens))
        ]
    )
    writer.add_token_merges([" ".join(pair) for pair in content["model"]["merges"]])
    writer.add_bos_token_id(style.specials.index(style.bos or style.eos))
    writer.add_eos_token_id(style.specials.index(style.eos))
    writer.add_add_bos_token(style.bos is not None)
    writer.add_add_eos_token(False)


def _llama3_rope_factors(model: ModelShape) -> Any:
    """The rope_freqs tensor llama.cpp uses for "llama3" rope scaling (per-frequency divisors)."""
    import numpy as np

    factor, low, high, old_ctx = model.rope_llama3_factor, 1.0, 4.0, model.rope_original_context
    freqs = 1.0 / model.rope_theta ** (np.arange(0, model.head_dim, 2) / model.head_dim)
    wavelen = 2 * math.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    factors = np.where(
        wavelen < old_ctx / high,
        1.0,
        np.where(wavelen > old_ctx / low, factor, 1 / ((1 - smooth) / factor + smooth)),
    )
    return factors.astype(np.float32)


def _permute_rotary(weight: Any, heads: int) -> Any:
    """HF Llama rotates halves of each head; GGUF "llama" rotates interleaved pairs."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _write_gguf(path: Path, hf: Path, model: ModelShape, label: str, f16: bool) -> None:
    """Write the HF weights as an F32 or F16 GGUF, streaming one tensor at a time."""
    gguf = require("gguf", "synth")
    import numpy as np

    safe_open = require("safetensors", "synth").safe_open
    arch = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2}[model.arch]
    names = gguf.get_tensor_name_map(arch, model.num_hidden_layers)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_name(label)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(model.vocab_size)
    writer.add_context_length(model.max_position_embeddings)
    writer.add_embedding_length(model.hidden_size)
    writer.add_block_count(model.num_hidden_layers)
    writer.add_feed_forward_length(model.intermediate_size)
    writer.add_head_count(model.num_attention_heads)
    writer.add_head_count_kv(model.num_key_value_heads)
    writer.add_key_length(model.head_dim)
    writer.add_value_length(model.head_dim)
    writer.add_rope_dimension_count(model.head_dim)
    writer.add_rope_freq_base(model.rope_theta)
    writer.add_layer_norm_rms_eps(model.rms_norm_eps)
    _gguf_tokenizer(writer, gguf, hf, model)

    files = sorted(hf.glob("model*.safetensors"))
    where = {}
    for file in files:
        with safe_open(str(file), framework="numpy") as st:
            where.update(dict.fromkeys(st.keys(), file))

    def load(hf_name: str) -> Any:
        with safe_open(str(where[hf_name]), framework="numpy") as st:
            tensor = st.get_tensor(hf_name)
        if model.arch == "llama" and ".q_proj." in hf_name:
            tensor = _permute_rotary(tensor, model.num_attention_heads)
        elif model.arch == "llama" and ".k_proj." in hf_name:
            tensor = _permute_rotary(tensor, model.num_key_value_heads)
        return tensor.astype(np.float16) if f16 and tensor.ndim == 2 else tensor

    plan: list[tuple[str, tuple[int, ...], Any, Callable[[], Any]]] = []
    if model.rope_llama3_factor is not None:
        factors = _llama3_rope_factors(model)
        plan.append(
            (
                gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
                factors.shape,
                factors.dtype,
                lambda: factors,
            )
        )
    for hf_name, dims in model.tensor_shapes().items():
        dtype = np.dtype(np.float16 if f16 and len(dims) == 2 else np.float32)
        plan.append(
            (
                names.get_name(hf_name, try_suffixes=(".weight", ".bias")),
                dims,
                dtype,
                lambda hf_name=hf_name: load(hf_name),
            )
        )
    for name, dims, dtype, _ in plan:
        writer.add_tensor_info(name, dims, dtype, math.prod(dims) * dtype.itemsize)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for *_, produce in plan:
        writer.write_tensor_data(produce())
    writer.close()


@contextlib.contextmanager
def _native_stderr() -> Iterator[list[str]]:
    """Capture what native code writes to fd 2 (llama.cpp logs); the text is appended to the
    yielded list on exit so that a failure can quote it."""
    captured: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            yield captured
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            captured.append(log.read().decode("utf-8", "replace"))


def _quantize_gguf(src: Path, dst: Path, name: str, ftype: int) -> None:
    """Quantize with llama.cpp's own quantizer (the same code as llama-quantize)."""
    llama_cpp = require("llama_cpp", "llamacpp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    with _native_stderr() as log:
        status = llama_cpp.llama_model_quantize(
            str(src).encode(), str(dst).encode(), ctypes.byref(params)
        )
    if status != 0:
        tail = "\n".join(log[0].strip().splitlines()[-8:])
        raise SynthError(f"llama.cpp could not quantize to {name} (status {status}):\n{tail}")


def build_gguf(
    shape: str | ModelShape,
    quant: str = "Q4_K_M",
    *,
    seed: int = 0,
    cache_dir: Path | None = None,
    allow_fallback: bool = False,
) -> Artifact:
    """Build (or reuse) a GGUF file for llama.cpp.

    F32 and F16 are written from the HF weights with the ``gguf`` package; every other
    ``LLAMA_FTYPE_*`` name (Q8_0, Q4_0, Q4_K_M, ..., case-insensitive) is made from the F32 file
    by ``llama_model_quantize``. A shape whose rows do not fit the quantization's blocks raises
    SynthError, unless ``allow_fallback`` accepts llama.cpp's substitute types for K-quants.
    """
    label, model = resolve_shape(shape)
    name, ftype = _gguf_ftype(quant)
    spec = model_spec("gguf", model, seed, quant=name)
    if _check_gguf_rows(model, name, allow_fallback):
        spec["allow_fallback"] = True
    file = f"{label}-{name}.gguf"

    def build(tmp: Path) -> list[str]:
        tmp.mkdir(parents=True)
        if name in ("F32", "F16"):
            hf = build_hf(model, seed=seed, cache_dir=cache_dir).path
            _write_gguf(tmp / file, hf, model, label, f16=name == "F16")
        else:
            src = build_gguf(model, "F32", seed=seed, cache_dir=cache_dir).path
            _quantize_gguf(src, tmp / file, name, ftype)
        return [file]

    folder, built = materialize(cache_dir, label, spec, build, ("gguf", "llama-cpp-python"))
    return Artifact(folder / file, built)
