"""Synthetic models: random-weight decoder LLMs built offline for MLX and llama.cpp.

Why: performance tests need models, but nothing here may download weights, and the throughput of
random weights equals that of trained weights once the number of tokens is forced. The factory
builds a model of a named shape preset (``PRESETS``) or of explicit dimensions (``ModelShape``):

1. a Hugging Face folder (``config.json``, float32 safetensors, a real byte-level BPE tokenizer
   trained with ``tokenizers`` on generated text), the single source of all other formats;
2. an MLX folder made from it by ``mlx_lm.convert`` (fp32/fp16/bf16 or 2-8 bit affine);
3. a GGUF file written with the ``gguf`` package (F32/F16, with the layouts llama.cpp expects)
   and quantized by llama.cpp itself (``llama_model_quantize``: Q8_0, Q4_0, Q4_K_M, ...).

Every artifact is cached under a key that hashes its full spec (shape, seed, format,
quantization, group size, dtype, factory version). Backend versions are deliberately not part of
the key: an upgrade gate must measure the same bytes under a new mlx / llama.cpp, and
``spec.json`` in each folder records the versions that built it plus a sha256 of the weights.

Nothing heavy is imported at module import: mlx, mlx_lm, llama_cpp, gguf, numpy, safetensors and
tokenizers are imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import importlib
import io
import json
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

FACTORY_VERSION = 2  # 2: MLX folders keep the factory's tokenizer files
CACHE_ENV = "MLXPERF_CACHE_DIR"
MLX_QUANTS = ("fp32", "fp16", "bf16", "2bit", "3bit", "4bit", "5bit", "6bit", "8bit")
MLX_DTYPES = ("float32", "float16", "bfloat16")
MLX_GROUP_SIZES = (32, 64, 128)
DEFAULT_QUANT = {"mlx": "4bit", "llamacpp": "Q4_K_M"}

_INSTALL_HINT = {
    "mlx": 'pip install "pytest-mlxperf[mlx]"',
    "llamacpp": 'pip install "pytest-mlxperf[llamacpp]"',
    "synth": 'pip install "pytest-mlxperf[synth]"',
}
_SHARD_BYTES = 2 * 1024**3  # HF safetensors shard size: bounds memory while writing big shapes
_MAX_TRAINED_VOCAB = 8192  # tokens learned from generated text; the rest of the vocab is padding
_INIT_STD = 0.02  # weights and embeddings: activations stay finite, logits are not degenerate
_NORM_STD = 0.1  # norms are 1 + N(0, 0.1), biases N(0, 0.1): a dropped one shows in the logits

# Pre-tokenizer regexes exactly as in the tokenizer.json of Llama 3 and Qwen2, with the name
# llama.cpp uses for the same split ("tokenizer.ggml.pre") and BPE's ignore_merges flag, which
# llama.cpp sets for "llama-bpe" and not for "qwen2".
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = _LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")


@dataclass(frozen=True)
class _TokenizerStyle:
    gguf_pre: str
    regex: str
    ignore_merges: bool
    specials: tuple[str, ...]
    bos: str | None
    eos: str


_TOKENIZER_STYLE = {
    "llama": _TokenizerStyle(
        gguf_pre="llama-bpe",
        regex=_LLAMA3_REGEX,
        ignore_merges=True,
        specials=("<|begin_of_text|>", "<|end_of_text|>"),
        bos="<|begin_of_text|>",
        eos="<|end_of_text|>",
    ),
    "qwen2": _TokenizerStyle(
        gguf_pre="qwen2",
        regex=_QWEN2_REGEX,
        ignore_merges=False,
        specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos=None,
        eos="<|endoftext|>",
    ),
}
_HF_ARCHITECTURE = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


class SynthError(ValueError):
    """A synthetic model cannot be built as asked: bad spec, shape or quantization, or a
    missing package (the message then says what to install)."""


def _require(module: str, extra: str) -> ModuleType:
    """Import an optional dependency or raise SynthError with the install command."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise SynthError(
            f"building synthetic models needs {module.split('.')[0]!r}: {_INSTALL_HINT[extra]}"
        ) from exc


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class ModelShape:
    """Dimensions of a decoder-only transformer in Hugging Face terms (defaults: the tiny preset).

    ``arch`` is "llama" (no biases, rotary halves permuted for GGUF) or "qwen2" (q/k/v biases,
    NEOX rotary). ``rope_llama3_factor`` enables Llama 3's "llama3" rope scaling with that factor
    (low/high frequency factors 1 and 4, original context 8192 as in every Llama 3.x, or the
    model's context if smaller).
    """

    arch: str = "llama"
    vocab_size: int = 1024
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 4096
    rope_theta: float = 500000.0
    rope_llama3_factor: float | None = 32.0
    tie_word_embeddings: bool = False
    rms_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.arch not in _TOKENIZER_STYLE:
            raise SynthError(f"arch must be one of {sorted(_TOKENIZER_STYLE)}, not {self.arch!r}")
        for name in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "max_position_embeddings",
        ):
            if getattr(self, name) < 1:
                raise SynthError(f"{name} must be positive, not {getattr(self, name)}")
        minimum = 256 + len(_TOKENIZER_STYLE[self.arch].specials) + 64
        if self.vocab_size < minimum:
            raise SynthError(
                f"vocab_size must be at least {minimum} (256 bytes, special "
                f"tokens and some merges), not {self.vocab_size}"
            )
        if self.hidden_size % self.num_attention_heads:
            raise SynthError(
                f"hidden_size={self.hidden_size} is not a multiple of "
                f"num_attention_heads={self.num_attention_heads}"
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise SynthError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple "
                f"of num_key_value_heads={self.num_key_value_heads}"
            )
        if self.head_dim % 2:
            raise SynthError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.rope_llama3_factor is not None and self.arch != "llama":
            raise SynthError("rope_llama3_factor is only supported for arch 'llama'")

    @property
    def rope_original_context(self) -> int:
        """Llama 3's pre-extension context (8192), capped at the model's own context length."""
        return min(8192, self.max_position_embeddings)

    @property
    def head_dim(self) -> int:
        """Per-head size; both mlx_lm's qwen2 and llama.cpp derive it as hidden / heads."""
        return self.hidden_size // self.num_attention_heads

    def tensor_shapes(self) -> dict[str, tuple[int, ...]]:
        """Hugging Face tensor names and shapes, in the order the weights are generated."""
        h, i, d = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_attention_heads * d, self.num_key_value_heads * d
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab_size, h)}
        for n in range(self.num_hidden_layers):
            p = f"model.layers.{n}."
            shapes[p + "input_layernorm.weight"] = (h,)
            for proj, rows in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)):
                shapes[f"{p}self_attn.{proj}.weight"] = (rows, h)
                if self.arch == "qwen2":
                    shapes[f"{p}self_attn.{proj}.bias"] = (rows,)
            shapes[p + "self_attn.o_proj.weight"] = (h, q)
            shapes[p + "post_attention_layernorm.weight"] = (h,)
            shapes[p + "mlp.gate_proj.weight"] = (i, h)
            shapes[p + "mlp.up_proj.weight"] = (i, h)
            shapes[p + "mlp.down_proj.weight"] = (h, i)
        shapes["model.norm.weight"] = (h,)
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, h)
        return shapes

    def param_count(self) -> int:
        """Number of parameters, counted like Hugging Face (tied embeddings once)."""
        return sum(math.prod(s) for s in self.tensor_shapes().values())

    def row_sizes(self) -> dict[str, int]:
        """Input width of every matrix (the row size quantizers split into blocks), by dimension."""
        return {
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_attention_heads*head_dim": self.num_attention_heads * self.head_dim,
        }

    def hf_config(self) -> dict[str, Any]:
        """The config.json of the Hugging Face folder (read by mlx_lm and transformers)."""
        style = _TOKENIZER_STYLE[self.arch]
        cfg: dict[str, Any] = {
            "architectures": [_HF_ARCHITECTURE[self.arch]],
            "model_type": self.arch,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": style.specials.index(style.bos if style.bos else style.eos),
            "eos_token_id": style.specials.index(style.eos),
            "torch_dtype": "float32",
            "use_cache": True,
        }
        if self.arch == "llama":
            cfg.update(attention_bias=False, mlp_bias=False)
            if self.rope_llama3_factor is not None:
                cfg["rope_scaling"] = {
                    "rope_type": "llama3",
                    "factor": self.rope_llama3_factor,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": self.rope_original_context,
                }
        else:
            cfg.update(
                use_sliding_window=False,
                sliding_window=self.max_position_embeddings,
                max_window_layers=self.num_hidden_layers,
            )
        return cfg


PRESETS: dict[str, ModelShape] = {
    # CI model: every row size a multiple of 256 so K-quants apply; untied so that the
    # output.weight path is exercised (the qwen2 tests cover tied embeddings).
    "tiny": ModelShape(),
    # the Qwen2 code path at test size: q/k/v biases, tied embeddings, NEOX rotary (no
    # permutation in the GGUF)
    "tiny-qwen2": ModelShape(
        arch="qwen2",
        vocab_size=512,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=1e6,
        rope_llama3_factor=None,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
    ),
    "llama-3.2-1b": ModelShape(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        tie_word_embeddings=True,
    ),
    "llama-3.2-3b": ModelShape(
        vocab_size=128256,
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        max_position_embeddings=131072,
        tie_word_embeddings=True,
    ),
    "qwen2.5-0.5b": ModelShape(
        arch="qwen2",
        vocab_size=151936,
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        rope_theta=1000000.0,
        rope_llama3_factor=None,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
    ),
}


def _resolve(shape: str | ModelShape) -> tuple[str, ModelShape]:
    """(label used in folder names, shape) for a preset name or an explicit shape."""
    if isinstance(shape, ModelShape):
        preset = next((name for name, known in PRESETS.items() if known == shape), None)
        return preset or f"custom-{shape.arch}", shape
    try:
        return shape.lower(), PRESETS[shape.lower()]
    except KeyError:
        raise SynthError(f"unknown model preset {shape!r}; presets: {', '.join(PRESETS)}") from None


# --------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    """Cache root: $MLXPERF_CACHE_DIR, else the user cache dir (~/.cache/pytest-mlxperf)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    try:
        from platformdirs import user_cache_dir
    except ImportError:
        return Path.home() / ".cache" / "pytest-mlxperf"
    return Path(user_cache_dir("pytest-mlxperf"))


def _spec(kind: str, shape: ModelShape, seed: int, **extra: Any) -> dict[str, Any]:
    return {
        "factory_version": FACTORY_VERSION,
        "kind": kind,
        "shape": asdict(shape),
        "seed": seed,
        **extra,
    }


def _sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _versions(*dists: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for dist in dists:
        with contextlib.suppress(PackageNotFoundError):
            found[dist] = version(dist)
    return found


def _materialize(
    cache_dir: Path | None,
    label: str,
    spec: dict[str, Any],
    build: Callable[[Path], list[str]],
    dists: tuple[str, ...],
) -> tuple[Path, bool]:
    """Return (folder, built) for ``spec``, building it at most once across processes.

    ``build(tmp)`` creates the folder ``tmp`` and returns the names of its weight files. The
    folder is built under a unique temporary name next to the target and renamed into place
    (atomic), with ``spec.json`` written last, under a file lock: a concurrent caller waits and
    reuses, and a half-written folder of a killed build is never taken for a model.
    """
    from filelock import FileLock

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    quant = f"-{spec['quant']}" if "quant" in spec else ""
    target = root / f"{spec['kind']}-{label}{quant}-{key}"
    if (target / "spec.json").is_file():
        return target, False
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "spec.json").is_file():
            return target, False
        # Holding the lock, anything else under this name is debris of a killed build.
        for debris in [target, *root.glob(target.name + ".tmp-*")]:
            shutil.rmtree(debris, ignore_errors=True)
        tmp = root / f"{target.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            start = time.perf_counter()
            weights = build(tmp)
            record = {
                "spec": spec,
                "label": label,
                "weights": weights,
                "weights_sha256": _sha256_files([tmp / name for name in weights]),
                "param_count": ModelShape(**spec["shape"]).param_count(),
                "build_seconds": round(time.perf_counter() - start, 3),
                "built_with": _versions(*dists),
            }
            (tmp / "spec.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target, True


def read_spec(path: Path) -> dict[str, Any]:
    """The ``spec.json`` record of a built model folder or of the .gguf file inside one."""
    folder = path.parent if path.is_file() else path
    return json.loads((folder / "spec.json").read_text())


# --------------------------------------------------------------------------- tokenizer


def _training_corpus(n_chars: int) -> Iterator[str]:
    """Deterministic pseudo-text: Zipf-distributed invented words, capitals, digits,
    punctuation, apostrophes, accents, CJK, code lines and newlines, so that the learned merges
    and the pre-tokenizer see the kinds of strings real prompts contain."""
    import numpy as np

    rng = np.random.default_rng(0x5EED)
    onsets = [*"bcdfghjklmnprstvwz", "ch", "sh", "th", "st", "tr", "pl", "br", "gr", "qu", "sp"]
    nuclei = [*"aeiouaeio", "ai", "ea", "ou", "io", "y", "é", "ü"]
    codas = ["", "", "n", "s", "t", "r", "l", "nd", "st", "ng", "ck"]
    n_words = 6000
    lengths = rng.integers(1, 4, n_words)
    parts = rng.integers(0, 1 << 30, (n_words, 7))
    words = [
        "".join(
            onsets[parts[w, k] % len(onsets)] + nuclei[parts[w, k + 3] % len(nuclei)]
            for k in range(lengths[w])
        )
        + codas[parts[w, 6] % len(codas)]
        for w in range(n_words)
    ]
    words[:12] = ["the", "of", "and", "to", "in", "is", "that", "for", "it", "with", "東京", "数据"]
    zipf = 1.0 / np.arange(1, n_words + 1)
    total = 0
    while total < n_chars:
        picks = rng.choice(n_words, size=4096, p=zipf / zipf.sum())
        extras = rng.random(4096)
        numbers = rng.integers(0, 100000, 4096)
        out, sentence = [], []
        for k in range(4096):
            word = words[picks[k]]
            if extras[k] < 0.04:
                word = str(numbers[k])
            elif extras[k] < 0.07:
                word += ("'s", "'t", "'ll", "'re")[numbers[k] % 4]
            elif extras[k] < 0.09:
                word = word.capitalize()
            sentence.append(word)
            if len(sentence) > 4 and extras[k] > 0.88:
                line = " ".join(sentence)
                line = line[0].upper() + line[1:] + ".!?;,:"[numbers[k] % 6]
                if extras[k] > 0.985:
                    line = f"    {sentence[0]}_{numbers[k] % 10} = {sentence[1]}({numbers[k]});\n"
                out.append(line)
                sentence = []
        text = " ".join(out) + "\n\n"
        total += len(text)
        yield text


def _train_tokenizer(shape: ModelShape) -> dict[str, Any]:
    """Train a byte-level BPE tokenizer and pad its vocab to ``shape.vocab_size``.

    Ids 0.. are the special tokens, then the 256 byte symbols and the learned merges, then
    never-produced "[PADn]" tokens (the name llama.cpp's converter gives padded vocab slots) so
    that the embedding matrix, parameter count and file size match the real model and every id
    below vocab_size decodes. Returns the tokenizer.json content."""
    tk = _require("tokenizers", "synth")
    style = _TOKENIZER_STYLE[shape.arch]
    tokenizer = tk.Tokenizer(tk.models.BPE(ignore_merges=style.ignore_merges))
    tokenizer.pre_tokenizer = tk.pre_tokenizers.Sequence(
        [
            tk.pre_tokenizers.Split(tk.Regex(style.regex), behavior="isolated"),
            tk.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = tk.decoders.ByteLevel()
    if style.bos:
        tokenizer.post_processor = tk.processors.TemplateProcessing(
            single=f"{style.bos} $A",
            pair=f"{style.bos} $A {style.bos} $B",
            special_tokens=[(style.bos, style.specials.index(style.bos))],
        )
    else:
        tokenizer.post_processor = tk.processors.ByteLevel(trim_offsets=False)
    trained = min(shape.vocab_size, _MAX_TRAINED_VOCAB)
    trainer = tk.trainers.BpeTrainer(
        vocab_size=trained,
        min_frequency=2,
        show_progress=False,
        special_tokens=list(style.specials),
        initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(
        _training_corpus(min(max(trained * 300, 300_000), 2_500_000)), trainer
    )
    content = json.loads(tokenizer.to_str())
    vocab = content["model"]["vocab"]
    vocab.update({f"[PAD{i}]": i for i in range(len(vocab), shape.vocab_size)})
    return content


def _write_tokenizer(folder: Path, shape: ModelShape) -> None:
    style = _TOKENIZER_STYLE[shape.arch]
    content = _train_tokenizer(shape)
    (folder / "tokenizer.json").write_text(json.dumps(content, ensure_ascii=False), "utf-8")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": style.bos,
        "eos_token": style.eos,
        "add_bos_token": style.bos is not None,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": shape.max_position_embeddings,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


# --------------------------------------------------------------------------- Hugging Face


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
    save_file = _require("safetensors.numpy", "synth").save_file
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
    _write_tokenizer(folder, shape)
    return files


def _build_hf(shape: str | ModelShape, seed: int, cache_dir: Path | None) -> tuple[Path, bool]:
    label, model = _resolve(shape)
    return _materialize(
        cache_dir,
        label,
        _spec("hf", model, seed),
        lambda tmp: _write_hf(tmp, model, seed),
        ("numpy", "safetensors", "tokenizers"),
    )


def build_hf(shape: str | ModelShape, *, seed: int = 0, cache_dir: Path | None = None) -> Path:
    """Build (or reuse) the float32 Hugging Face folder of a shape: the source of every format."""
    return _build_hf(shape, seed, cache_dir)[0]


# --------------------------------------------------------------------------- MLX


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


def _build_mlx(
    shape: str | ModelShape,
    quant: str,
    group_size: int,
    dtype: str,
    seed: int,
    cache_dir: Path | None,
) -> tuple[Path, bool]:
    label, model = _resolve(shape)
    bits, dtype = _mlx_settings(model, quant, group_size, dtype)
    spec = _spec("mlx", model, seed, quant=quant.lower(), dtype=dtype)
    if bits is not None:
        spec["group_size"] = group_size

    def build(tmp: Path) -> list[str]:
        convert = _require("mlx_lm.convert", "mlx").convert
        hf = build_hf(model, seed=seed, cache_dir=cache_dir)
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

    return _materialize(cache_dir, label, spec, build, ("mlx", "mlx-lm"))


def build_mlx(
    shape: str | ModelShape,
    quant: str = "4bit",
    *,
    group_size: int = 64,
    dtype: str = "float32",
    seed: int = 0,
    cache_dir: Path | None = None,
) -> Path:
    """Build (or reuse) an MLX model folder loadable by ``mlx_lm.load``.

    ``quant``: "fp32", "fp16", "bf16" (all weights in that dtype) or "2bit".."8bit" (affine,
    ``group_size`` 32/64/128). For quantized models ``dtype`` is the type of every tensor that
    is not quantized (norms, scales, biases); it defaults to float32 because float16 runs ~20x
    slower on MLX's CPU backend. The dtype is part of the model's identity (cache key).
    """
    return _build_mlx(shape, quant, group_size, dtype, seed, cache_dir)[0]


# --------------------------------------------------------------------------- GGUF


def _gguf_ftype(quant: str) -> tuple[str, int]:
    """Canonical name and llama_ftype value of a GGUF quantization ("q4_k_m",
    "LLAMA_FTYPE_MOSTLY_Q4_K_M" and "Q4_K_M" are the same)."""
    gguf = _require("gguf", "synth")
    name = quant.upper().removeprefix("LLAMA_FTYPE_")
    names = {m.name.split("_", 1)[1]: m for m in gguf.LlamaFileType if m.name != "GUESSED"}
    ftype = names.get(name.removeprefix("MOSTLY_").removeprefix("ALL_"))
    if ftype is None:
        raise SynthError(f"unknown GGUF quantization {quant!r}; use one of {', '.join(names)}")
    return ftype.name.split("_", 1)[1], int(ftype)


def _gguf_block_size(name: str) -> int:
    """Row block size of the main ggml type of a file type (Q4_K_M -> Q4_K -> 256)."""
    gguf = _require("gguf", "synth")
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
    style = _TOKENIZER_STYLE[model.arch]
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
    gguf = _require("gguf", "synth")
    import numpy as np

    safe_open = _require("safetensors", "synth").safe_open
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
    llama_cpp = _require("llama_cpp", "llamacpp")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    with _native_stderr() as log:
        status = llama_cpp.llama_model_quantize(
            str(src).encode(), str(dst).encode(), ctypes.byref(params)
        )
    if status != 0:
        tail = "\n".join(log[0].strip().splitlines()[-8:])
        raise SynthError(f"llama.cpp could not quantize to {name} (status {status}):\n{tail}")


def _build_gguf(
    shape: str | ModelShape, quant: str, seed: int, cache_dir: Path | None, allow_fallback: bool
) -> tuple[Path, bool]:
    label, model = _resolve(shape)
    name, ftype = _gguf_ftype(quant)
    spec = _spec("gguf", model, seed, quant=name)
    if _check_gguf_rows(model, name, allow_fallback):
        spec["allow_fallback"] = True
    file = f"{label}-{name}.gguf"

    def build(tmp: Path) -> list[str]:
        tmp.mkdir(parents=True)
        if name in ("F32", "F16"):
            hf = build_hf(model, seed=seed, cache_dir=cache_dir)
            _write_gguf(tmp / file, hf, model, label, f16=name == "F16")
        else:
            src = build_gguf(model, "F32", seed=seed, cache_dir=cache_dir)
            _quantize_gguf(src, tmp / file, name, ftype)
        return [file]

    folder, built = _materialize(cache_dir, label, spec, build, ("gguf", "llama-cpp-python"))
    return folder / file, built


def build_gguf(
    shape: str | ModelShape,
    quant: str = "Q4_K_M",
    *,
    seed: int = 0,
    cache_dir: Path | None = None,
    allow_fallback: bool = False,
) -> Path:
    """Build (or reuse) a GGUF file for llama.cpp.

    F32 and F16 are written from the HF weights with the ``gguf`` package; every other
    ``LLAMA_FTYPE_*`` name (Q8_0, Q4_0, Q4_K_M, ..., case-insensitive) is made from the F32 file
    by ``llama_model_quantize``. A shape whose rows do not fit the quantization's blocks raises
    SynthError, unless ``allow_fallback`` accepts llama.cpp's substitute types for K-quants.
    """
    return _build_gguf(shape, quant, seed, cache_dir, allow_fallback)[0]


def build(backend: str, shape: str | ModelShape, quant: str | None = None, **kw: Any) -> Path:
    """Build a model for a backend ("mlx" or "llamacpp"); ``quant`` None means its default
    ("4bit" / "Q4_K_M"); keyword arguments go to build_mlx / build_gguf."""
    if backend == "mlx":
        return build_mlx(shape, quant or DEFAULT_QUANT["mlx"], **kw)
    if backend == "llamacpp":
        return build_gguf(shape, quant or DEFAULT_QUANT["llamacpp"], **kw)
    raise SynthError(f"unknown backend {backend!r}; use 'mlx' or 'llamacpp'")


# --------------------------------------------------------------------------- CLI


def _disk_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human(n: float) -> str:
    """Bytes for people: 1234567 -> '1.23 MB' (powers of 1000, as mlx-lm reports sizes)."""
    if n < 1000:
        return f"{n:.0f} B"
    exp = min(int(math.log10(n) // 3), 4)
    return f"{n / 1000**exp:.2f} {' KMGT'[exp]}B"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``synth`` subcommand to the ``mlxperf`` command."""
    parser = subparsers.add_parser(
        "synth",
        help="build cached synthetic models (offline, random weights)",
        description="Build random-weight models of a preset shape for MLX and llama.cpp. "
        "Without --mlx/--gguf: MLX 4bit and GGUF Q4_K_M.",
    )
    parser.add_argument("preset", nargs="?", default="tiny", help="shape preset (see --list)")
    parser.add_argument(
        "--mlx",
        action="append",
        default=[],
        metavar="QUANT",
        help=f"MLX quantization, repeatable: {', '.join(MLX_QUANTS)}",
    )
    parser.add_argument(
        "--gguf",
        action="append",
        default=[],
        metavar="QUANT",
        help="GGUF quantization, repeatable: F32, F16, Q8_0, Q4_0, Q4_K_M, ...",
    )
    parser.add_argument("--seed", type=int, default=0, help="weights seed (default 0)")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help=f"cache root (default ${CACHE_ENV} or {default_cache_dir()})",
    )
    parser.add_argument("--group-size", type=int, default=64, help="MLX group size (64)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=MLX_DTYPES,
        help="MLX dtype of the tensors that stay unquantized (float32)",
    )
    parser.add_argument(
        "--allow-fallback",
        action="store_true",
        help="accept llama.cpp's fallback types for rows K-quants cannot hold",
    )
    parser.add_argument("--list", action="store_true", help="list the presets and exit")
    parser.set_defaults(func=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    """Run ``mlxperf synth``: print path, build time (or "cached") and size per artifact."""
    if args.list:
        print(f"{'preset':<14} {'arch':<6} {'params':>9} {'hidden':>6} {'layers':>6} {'vocab':>7}")
        for name, s in PRESETS.items():
            params = s.param_count()
            count = f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.1f}M"
            print(
                f"{name:<14} {s.arch:<6} {count:>9} "
                f"{s.hidden_size:>6} {s.num_hidden_layers:>6} {s.vocab_size:>7}"
            )
        return 0
    jobs: list[tuple[str, str]] = [("mlx", q) for q in args.mlx] + [("gguf", q) for q in args.gguf]
    try:
        for backend, quant in jobs or [("mlx", "4bit"), ("gguf", "Q4_K_M")]:
            start = time.perf_counter()
            if backend == "mlx":
                path, built = _build_mlx(
                    args.preset, quant, args.group_size, args.dtype, args.seed, args.cache_dir
                )
            else:
                path, built = _build_gguf(
                    args.preset, quant, args.seed, args.cache_dir, args.allow_fallback
                )
            status = f"built {time.perf_counter() - start:.1f}s" if built else "cached"
            print(
                f"{backend:<4} {quant:<7} {status:>13} {_human(_disk_size(path)):>10}  {path}",
                flush=True,
            )
    except (SynthError, OSError) as exc:
        print(f"mlxperf synth: error: {exc}", file=sys.stderr)
        return 2
    return 0
