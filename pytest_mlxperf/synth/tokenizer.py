"""The tokenizer of a synthetic model: a real byte-level BPE trained offline on generated text.

Random weights are enough for throughput, but tokenization is not: prompt lengths, the
pre-tokenizer and the special tokens must behave like the real model's, and MLX and llama.cpp
must split the same text into the same ids. So a ``tokenizers`` BPE with the architecture's own
pre-tokenizer regex and special tokens is trained on a deterministic corpus of invented text and
padded to the shape's vocabulary size.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pytest_mlxperf.synth.errors import require
from pytest_mlxperf.synth.shapes import TOKENIZER_STYLES, ModelShape

_MAX_TRAINED_VOCAB = 8192  # tokens learned from generated text; the rest of the vocab is padding


def training_corpus(n_chars: int) -> Iterator[str]:
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
    tk = require("tokenizers", "synth")
    style = TOKENIZER_STYLES[shape.arch]
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
        training_corpus(min(max(trained * 300, 300_000), 2_500_000)), trainer
    )
    content = json.loads(tokenizer.to_str())
    vocab = content["model"]["vocab"]
    vocab.update({f"[PAD{i}]": i for i in range(len(vocab), shape.vocab_size)})
    return content


def write_tokenizer(folder: Path, shape: ModelShape) -> None:
    """Write tokenizer.json and tokenizer_config.json of ``shape`` into ``folder``."""
    style = TOKENIZER_STYLES[shape.arch]
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
