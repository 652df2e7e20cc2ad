"""The memory levers of LoRA fine-tuning (mlx-lm's LORA.md, "Memory Issues"), measured.

For one synthetic model shape and sequence length, runs mlx-lm's trainer (through
``pytest_mlxperf.backends.finetune``) for: a baseline LoRA; the same with gradient checkpointing; a
smaller batch; fewer LoRA layers; a 4-bit quantized base (QLoRA). Prints the MLX allocator peak
and the speed of each, with ratios to the baseline. Every example of the generated dataset is
longer than the sequence length, so every batch is full and the work per iteration is fixed.

The float32 model and the quantized one are never loaded at the same time: the allocator peak
counts every array the process holds ("resident" is what was held when a repetition began).
Peaks are exact and repeatable; speeds are as noisy as the machine (other processes).

Default size: hidden 512, 8 layers, 2 x 256 tokens per batch. Tokens per batch / hidden size is
then 1, as for Llama-3.2-1B (hidden 2048) at batch 4 x 512: activations and weights weigh in
roughly the same proportion as there. Bigger shapes are out of reach here: the Linux mlx[cpu] wheel
links the reference (netlib) BLAS, ~2.5 GFLOP/s on this machine, and one iteration of the
default costs ~25 s (about 5 minutes for the whole table).

Usage: python benchmarks/finetune_levers.py [--hidden 512] [--layers 8] [--seq 256] [--batch 2]
       python benchmarks/finetune_levers.py --preset tiny --seq 64 --batch 2   (the CI test's case)
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pytest_mlxperf import synth
from pytest_mlxperf.backends import finetune


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=list(synth.PRESETS), help="a preset instead of the shape")
    p.add_argument("--hidden", type=int, default=512, help="hidden size (512)")
    p.add_argument("--layers", type=int, default=8, help="transformer blocks (8)")
    p.add_argument("--vocab", type=int, default=2048, help="vocabulary size (2048)")
    p.add_argument("--seq", type=int, default=256, help="max_seq_length, every batch full (256)")
    p.add_argument("--batch", type=int, default=2, help="baseline batch size (2)")
    p.add_argument("--fewer-layers", type=int, default=2, help="LoRA layers of that lever (2)")
    p.add_argument("--quant", default="4bit", help="quantization of the QLoRA base (4bit)")
    p.add_argument("--iterations", type=int, default=1, help="timed iterations (1)")
    p.add_argument("--repetitions", type=int, default=1, help="timed repetitions (1)")
    return p.parse_args(argv)


def model_shape(args: argparse.Namespace) -> synth.ModelShape:
    """A Llama-style shape: head size 64, 4 query heads per KV head, MLP 2.75x hidden (rounded
    to a multiple of 256 so that every row quantizes in groups of 64)."""
    if args.preset:
        return synth.PRESETS[args.preset]
    heads = args.hidden // 64
    return synth.ModelShape(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=256 * round(2.75 * args.hidden / 256),
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 4),
    )


def measure(path: Path, workloads: dict[str, finetune.FinetuneWorkload], reps: int) -> dict:
    """Load one model, measure each workload on it, release the model."""
    from mlx_lm import load

    model, tokenizer = load(str(path))
    rows = {}
    for name, workload in workloads.items():
        t0 = time.perf_counter()
        m = finetune.measure_finetune(model, tokenizer, workload, warmup=0, repetitions=reps)
        rows[name] = {
            "label": workload.label,
            "resident": statistics.median(r.active_memory for r in m.raw),
            "wall": time.perf_counter() - t0,
            **{k: statistics.median(v) for k, v in m.samples.items()},
        }
        print(f"  measured {name} ({rows[name]['wall']:.0f} s)", file=sys.stderr, flush=True)
    del model, tokenizer
    gc.collect()
    return rows


def table(rows: dict[str, dict[str, Any]]) -> str:
    base = rows["baseline LoRA"]
    head = (
        f"{'configuration':<24} {'workload':<20} {'resident MB':>11} {'peak MB':>9} {'x base':>7}"
        f" {'it/s':>7} {'trained tok/s':>13} {'x base':>7}"
    )
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        peak, tps = r["peak_memory"], r["trained_tps"]
        lines.append(
            f"{name:<24} {r['label']:<20} {r['resident'] / 1e6:>11.1f} {peak / 1e6:>9.1f} "
            f"{peak / base['peak_memory']:>7.2f} {r['iterations_per_s']:>7.3f} {tps:>13.1f} "
            f"{tps / base['trained_tps']:>7.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shape = model_shape(args)
    t0 = time.perf_counter()
    fp32 = synth.build_mlx(shape, "fp32").path
    quantized = synth.build_mlx(shape, args.quant).path
    print(
        f"model: {shape.param_count() / 1e6:.1f}M parameters, hidden {shape.hidden_size}, "
        f"{shape.num_hidden_layers} layers, vocab {shape.vocab_size} (built/cached in "
        f"{time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = finetune.make_dataset(Path(tmp), n=max(16, 4 * args.batch), tokens=args.seq, seed=0)

        def workload(**change: Any) -> finetune.FinetuneWorkload:
            base = dict(
                dataset=str(data),
                iterations=args.iterations,
                warmup_iterations=1,
                batch_size=args.batch,
                max_seq_length=args.seq,
            )
            return finetune.FinetuneWorkload(**{**base, **change})

        rows = measure(
            fp32,
            {
                "baseline LoRA": workload(),
                "+ grad checkpointing": workload(grad_checkpoint=True),
                "smaller batch": workload(batch_size=max(1, args.batch // 2)),
                "fewer LoRA layers": workload(num_layers=args.fewer_layers),
            },
            args.repetitions,
        )
        rows.update(
            measure(quantized, {f"QLoRA ({args.quant} base)": workload()}, args.repetitions)
        )
    print(table(rows))
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
