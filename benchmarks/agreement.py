"""Do pytest-mlxperf's numbers agree with each backend's own reference, on the same model and run?

MLX: the plugin's protocol and ``mlx_lm.stream_generate`` (EOS disabled as in
``mlx_lm.benchmark``) alternate on the same prompt in one process; the ratio of their medians is
printed per metric. ``stream_generate`` counts the first token in its decode rate
(N / (t_end - t_first)); we exclude it ((N-1) / (t_last - t_first)), so both forms are shown.

llama.cpp: every repetition's timestamps against llama.cpp's own perf counters of that same
repetition (``llama_perf_context``: t_p_eval_ms / n_p_eval, t_eval_ms / n_eval).

Usage: python benchmarks/agreement.py [--model synth:tiny] [--prompt 256] [--gen 128] [--reps 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

from pytest_mlxperf.backends import load
from pytest_mlxperf.measuring.measure import derive_metrics, make_prompt
from pytest_mlxperf.measuring.workload import Workload


def mlx_reference(model, prompt: list[int], workload: Workload) -> dict[str, float]:
    """One ``stream_generate`` run, its own statistics."""
    import mlx.core as mx
    from mlx_lm import stream_generate

    tokenizer = model.tokenizer
    tokenizer._eos_token_ids = set()  # as mlx_lm.benchmark does: always generate max_tokens
    mx.reset_peak_memory()
    responses = list(
        stream_generate(
            model.model, tokenizer, mx.array(prompt), max_tokens=workload.generation_tokens
        )
    )
    last = responses[-1]
    assert last.generation_tokens == workload.generation_tokens
    n = last.generation_tokens
    return {
        "prompt_tps": last.prompt_tps,
        # convert mlx-lm's N / (t_end - t_first) to our (N - 1) / (t_last - t_first) form
        "generation_tps (mlx-lm's own)": last.generation_tps,
        "generation_tps": last.generation_tps * (n - 1) / n,
        "peak_memory": last.peak_memory * 1e9,
    }


def ratio_table(rows: dict[str, tuple[list[float], list[float]]], left: str, right: str) -> None:
    print(f"{'metric':32} {left:>14} {right:>14} {'ratio':>8}")
    for name, (ours, theirs) in rows.items():
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"{name:32} {a:14.4g} {b:14.4g} {a / b:8.3f}")


def run_mlx(source: str, workload: Workload, reps: int) -> None:
    model = load("mlx", source)
    _, prompt = make_prompt(model, workload)
    model.run(prompt, [], workload)  # warm-up, same shape
    mlx_reference(model, prompt, workload)
    ours: dict[str, list[float]] = {}
    theirs: dict[str, list[float]] = {}
    for _ in range(reps):  # alternate, so drift hits both sides alike
        for k, v in derive_metrics(model.run(prompt, [], workload), len(prompt)).items():
            ours.setdefault(k, []).append(v)
        for k, v in mlx_reference(model, prompt, workload).items():
            theirs.setdefault(k, []).append(v)
    print(f"\nMLX {source} {workload.label}, {reps} alternating repetitions each")
    rows = {k: (ours[k], theirs[k]) for k in ("prompt_tps", "generation_tps", "peak_memory")}
    ratio_table(rows, "pytest-mlxperf", "stream_generate")
    g = statistics.median(theirs["generation_tps (mlx-lm's own)"])
    print(f"(mlx-lm's own generation_tps, first token included: {g:.4g})")


def run_llamacpp(source: str, workload: Workload, reps: int) -> None:
    model = load("llamacpp", source)
    _, prompt = make_prompt(model, workload)
    model.run(prompt, [], workload)
    rows: dict[str, tuple[list[float], list[float]]] = {
        "prompt_tps": ([], []),
        "generation_tps": ([], []),
    }
    for _ in range(reps):
        raw = model.run(prompt, [], workload)
        ours = derive_metrics(raw, len(prompt))
        c = raw.backend_counters
        assert c["n_p_eval"] == len(prompt) and c["n_eval"] == workload.generation_tokens - 1
        rows["prompt_tps"][0].append(ours["prompt_tps"])
        rows["prompt_tps"][1].append(c["n_p_eval"] / c["t_p_eval_ms"] * 1e3)
        rows["generation_tps"][0].append(ours["generation_tps"])
        rows["generation_tps"][1].append(c["n_eval"] / c["t_eval_ms"] * 1e3)
    print(f"\nllama.cpp {source} {workload.label}, {reps} repetitions")
    ratio_table(rows, "pytest-mlxperf", "llama perf ctr")
    model.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="synth:tiny")
    parser.add_argument("--prompt", type=int, default=256)
    parser.add_argument("--gen", type=int, default=128)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    workload = Workload(prompt_tokens=args.prompt, generation_tokens=args.gen)
    t0 = time.perf_counter()
    run_llamacpp(args.model, workload, args.reps)
    run_mlx(args.model, workload, args.reps)
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
