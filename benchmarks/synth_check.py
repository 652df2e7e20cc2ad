"""Check the synthetic model factory and print its figures.

Prints, for the tiny preset: the build time and on-disk size of every format (cold cache, then
the cache hit), the max abs difference between MLX (fp32) and llama.cpp (F32 GGUF) logits for a
llama and a qwen2 shape, and the agreement of the HF and llama.cpp tokenizers. With ``--real``
it also builds a real-shape preset (MLX 4bit, GGUF Q4_K_M) and compares its parameter count and
file sizes with the published model's.

    python benchmarks/synth_check.py                       # tiny only, fresh temporary cache
    python benchmarks/synth_check.py --real llama-3.2-1b   # + a real shape (~15 GB of cache)
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pytest_mlxperf import synth

# Published figures of the real models (bytes, parameters).
REAL = {
    "llama-3.2-1b": {
        # meta-llama/Llama-3.2-1B model card: 1.24B parameters (tied embeddings counted once)
        "params": 1_235_814_400,
        # bartowski/Llama-3.2-1B-Instruct-GGUF: Llama-3.2-1B-Instruct-Q4_K_M.gguf, LFS size
        # 807694464 (sha256 6f85a640...); other llama.cpp Q4_K_M uploads are also 808 MB
        "gguf Q4_K_M": 807_694_464,
        # mlx-community/Llama-3.2-1B-Instruct-4bit: model.safetensors, 695 MB (16-bit scales)
        "mlx 4bit": 695e6,
    },
}
TOKENIZER_TEXTS = [
    "Hello world! The quick brown fox's 12345 jumps; naïve café 東京 😀\n\n  two  spaces\tTab",
    "I'LL say it's   done.\r\nx = f(3) + g[42] // don't\n\n\n",
]


def timed(build, *args, **kw) -> tuple[Path, float]:
    """The path of the artifact ``build(*args, **kw)`` returns, and the seconds the call took."""
    start = time.perf_counter()
    artifact = build(*args, **kw)
    return artifact.path, time.perf_counter() - start


def tiny_builds(cache: Path) -> None:
    print("== tiny preset: build (cold cache) and cache hit")
    print(f"{'artifact':<14} {'cold s':>8} {'hit s':>8} {'size':>10}")
    jobs = [("hf", None)] + [("mlx", q) for q in ("fp32", "fp16", "bf16", "4bit", "8bit")]
    jobs += [("gguf", q) for q in ("F32", "F16", "Q8_0", "Q4_0", "Q4_K_M")]
    for kind, quant in jobs:

        def one(kind=kind, quant=quant) -> synth.Artifact:
            if kind == "hf":
                return synth.build_hf("tiny", cache_dir=cache)
            if kind == "mlx":
                return synth.build_mlx("tiny", quant, cache_dir=cache)
            return synth.build_gguf("tiny", quant, cache_dir=cache)

        path, cold = timed(one)
        _, hit = timed(one)
        print(
            f"{kind + ' ' + (quant or ''):<14} {cold:8.2f} {hit:8.3f} "
            f"{synth.human_size(synth.disk_size(path)):>10}"
        )


def logits_agreement(cache: Path) -> None:
    import mlx.core as mx
    from llama_cpp import Llama
    from mlx_lm import load

    print("\n== logits: MLX fp32 vs llama.cpp F32, 300 random prompt tokens, all positions")
    for label, shape in (("llama tiny", "tiny"), ("qwen2 tiny", "tiny-qwen2")):
        model, _ = load(str(synth.build_mlx(shape, "fp32", cache_dir=cache).path))
        gguf = synth.build_gguf(shape, "F32", cache_dir=cache).path
        llm = Llama(model_path=str(gguf), n_ctx=512, logits_all=True, verbose=False)
        vocab = model.args.vocab_size
        prompt = [int(t) for t in np.random.default_rng(0).integers(0, vocab, 300)]
        ours = np.array(model(mx.array([prompt]))[0])
        llm.eval(prompt)
        theirs = np.array(llm.scores[: len(prompt)])
        diff = np.abs(ours - theirs)
        same_argmax = float(np.mean(ours.argmax(-1) == theirs.argmax(-1)))
        print(
            f"{label:<11} max abs diff {diff.max():.2e} (last token {diff[-1].max():.2e}); "
            f"logits std {ours.std():.3f}, max |logit| {np.abs(ours).max():.3f}; "
            f"argmax agreement {same_argmax:.1%}"
        )


def tokenizer_agreement(cache: Path) -> None:
    from llama_cpp import Llama
    from mlx_lm import load

    print("\n== tokenizer: mlx_lm (HF) vs llama.cpp on the same text, no BOS")
    rng = np.random.default_rng(1)
    alphabet = [
        *"abcdefXYZ019 .,;:!?'\"()[]<>-_=+*/\\\n\t\r",
        "  ",
        "\n\n",
        "é",
        "東",
        "😀",
        "'s",
        "'LL",
        "\u00a0",
        "ß",
    ]
    fuzz = ["".join(rng.choice(alphabet, size=int(rng.integers(1, 40)))) for _ in range(2000)]
    for label, shape in (("llama tiny", "tiny"), ("qwen2 tiny", "tiny-qwen2")):
        _, tokenizer = load(str(synth.build_mlx(shape, "fp32", cache_dir=cache).path))
        llm = Llama(
            model_path=str(synth.build_gguf(shape, "F32", cache_dir=cache).path),
            vocab_only=True,
            verbose=False,
        )
        texts = TOKENIZER_TEXTS + fuzz + [next(synth.training_corpus(50_000))]
        same = sum(
            tokenizer.encode(t, add_special_tokens=False)
            == llm.tokenize(t.encode(), add_bos=False, special=False)
            for t in texts
        )
        print(f"{label:<11} identical ids for {same}/{len(texts)} texts")


def real_shape(preset: str, cache: Path) -> None:
    from safetensors import safe_open

    shape = synth.PRESETS[preset]
    print(f"\n== real shape {preset}")
    hf, seconds = timed(synth.build_hf, preset, cache_dir=cache)
    counted = 0
    for file in hf.glob("model*.safetensors"):
        with safe_open(str(file), framework="numpy") as st:
            names = st.keys()
            counted += sum(int(np.prod(st.get_slice(name).get_shape())) for name in names)
    ref = REAL.get(preset, {})

    def versus(value: float, key: str, fmt) -> str:
        if key not in ref:
            return fmt(value)
        return f"{fmt(value)} vs real {fmt(ref[key])} ({value / ref[key] - 1:+.1%})"

    print(
        f"params: {versus(counted, 'params', lambda v: f'{v / 1e9:.4f}B')} "
        f"(ModelShape.param_count {shape.param_count():,})"
    )
    print(f"{'hf fp32':<12} {seconds:7.1f}s  weights {synth.human_size(synth.disk_size(hf))}")
    for label, build, kw, note in (
        ("mlx 4bit", synth.build_mlx, {"dtype": "bfloat16"}, "16-bit scales like mlx-community"),
        ("mlx 4bit f32", synth.build_mlx, {}, "the default: scales and norms in float32"),
        ("gguf Q4_K_M", synth.build_gguf, {}, ""),
    ):
        path, seconds = timed(build, preset, cache_dir=cache, **kw)
        folder = path.parent if path.is_file() else path
        weights = sum(synth.disk_size(folder / name) for name in synth.read_spec(path)["weights"])
        size = versus(weights, label.removesuffix(" f32"), synth.human_size)
        print(f"{label:<12} {seconds:7.1f}s  weights {size}  {note}".rstrip())
        if kw.get("dtype") != "bfloat16":  # 16-bit MLX on CPU: ~50 s per token at this size
            print(f"{'':<12} {smoke(path)}")


def smoke(path: Path) -> str:
    """Load the model and generate two tokens (real shapes are slow on small CPUs)."""
    start = time.perf_counter()
    if path.suffix == ".gguf":
        from llama_cpp import Llama

        llm = Llama(model_path=str(path), n_ctx=256, verbose=False)
        tokens = list(itertools.islice(llm.generate(llm.tokenize(b"Once upon"), temp=0.0), 2))
    else:
        import mlx.core as mx
        from mlx_lm import load
        from mlx_lm.generate import generate_step

        model, tokenizer = load(str(path))
        steps = generate_step(mx.array(tokenizer.encode("Once upon")), model)
        tokens = [int(token) for (token, _), _ in zip(steps, range(2), strict=False)]
    return f"loads and generates {len(tokens)} tokens in {time.perf_counter() - start:.1f}s"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, help="cache root (default: a fresh temp dir)")
    parser.add_argument(
        "--real",
        action="append",
        default=[],
        choices=sorted(synth.PRESETS),
        help="also build this real-shape preset (repeatable)",
    )
    parser.add_argument("--skip-tiny", action="store_true", help="only the --real presets")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="synth-check-") as tmp:
        cache = args.cache_dir or Path(tmp)
        print(f"cache: {cache}")
        if not args.skip_tiny:
            tiny_builds(cache)
            logits_agreement(cache)
            tokenizer_agreement(cache)
        for preset in args.real:
            real_shape(preset, cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
