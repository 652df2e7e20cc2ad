"""Model shapes: the dimensions of a decoder-only transformer, the named presets, and the
per-architecture tokenizer conventions.

A shape is the whole identity of a synthetic model's architecture: it is validated here, once,
so that every format built from it (Hugging Face, MLX, GGUF) can trust it; it knows its tensor
names and shapes in the order the weights are drawn, its parameter count and its config.json.
The presets reproduce real models' dimensions (Llama 3.2 1B/3B, Qwen2.5 0.5B) so that their
throughput and memory match, plus tiny shapes for CI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pytest_mlxperf.synth.errors import SynthError

# Pre-tokenizer regexes exactly as in the tokenizer.json of Llama 3 and Qwen2, with the name
# llama.cpp uses for the same split ("tokenizer.ggml.pre") and BPE's ignore_merges flag, which
# llama.cpp sets for "llama-bpe" and not for "qwen2".
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = _LLAMA3_REGEX.replace(r"\p{N}{1,3}", r"\p{N}")


@dataclass(frozen=True)
class TokenizerStyle:
    """How an architecture's published tokenizer splits and marks text; the tokenizer trainer,
    config.json and the GGUF metadata all read it, so the three formats agree."""

    gguf_pre: str
    regex: str
    ignore_merges: bool
    specials: tuple[str, ...]
    bos: str | None
    eos: str


TOKENIZER_STYLES = {
    "llama": TokenizerStyle(
        gguf_pre="llama-bpe",
        regex=_LLAMA3_REGEX,
        ignore_merges=True,
        specials=("<|begin_of_text|>", "<|end_of_text|>"),
        bos="<|begin_of_text|>",
        eos="<|end_of_text|>",
    ),
    "qwen2": TokenizerStyle(
        gguf_pre="qwen2",
        regex=_QWEN2_REGEX,
        ignore_merges=False,
        specials=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        bos=None,
        eos="<|endoftext|>",
    ),
}
_HF_ARCHITECTURE = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}


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
        if self.arch not in TOKENIZER_STYLES:
            raise SynthError(f"arch must be one of {sorted(TOKENIZER_STYLES)}, not {self.arch!r}")
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
        minimum = 256 + len(TOKENIZER_STYLES[self.arch].specials) + 64
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
        style = TOKENIZER_STYLES[self.arch]
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


def resolve_shape(shape: str | ModelShape) -> tuple[str, ModelShape]:
    """(label used in folder names, shape) for a preset name or an explicit shape."""
    if isinstance(shape, ModelShape):
        preset = next((name for name, known in PRESETS.items() if known == shape), None)
        return preset or f"custom-{shape.arch}", shape
    try:
        return shape.lower(), PRESETS[shape.lower()]
    except KeyError:
        raise SynthError(f"unknown model preset {shape!r}; presets: {', '.join(PRESETS)}") from None
