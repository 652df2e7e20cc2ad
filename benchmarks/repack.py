"""Weight repacking as a performance lever: llama.cpp with its weights repacked at load (its
default: ``CPU_REPACK`` interleaved layouts, or ``AMX`` where the build has it) against the
same weights left as the file has them (``--mlxperf-repack off``, llama-server's
``--no-repack``), side by side in one run.

Both models live in their own worker process for the whole run; rounds alternate which one
is measured first, and each round's ratio off / on is kept, so drift of the machine between
rounds cancels out. Threads: pytest-mlxperf's default (``default_threads``).

    python benchmarks/repack.py --rounds 6
    python benchmarks/repack.py --models synth:tiny@Q4_0 --rounds 3   # quick

Run it alone on a quiet machine: both cores are llama.cpp's.
"""

from __future__ import annotations

import argparse
import statistics
import time

from pytest_mlxperf.backends.llamacpp_build import PACKAGE
from pytest_mlxperf.backends.worker import WorkerModel
from pytest_mlxperf.measuring.measure import measure
from pytest_mlxperf.measuring.workload import Workload

METRICS = ("prompt_tps", "generation_tps")
MODELS = (
    "synth:tiny@Q4_0",
    "synth:tiny@Q4_K_M",
    "synth:qwen2.5-0.5b@Q4_0",
    "synth:qwen2.5-0.5b@Q8_0",  # Q4_K needs rows of 256: Qwen's 896 are not
    "synth:llama-3.2-1b@Q4_0",
    "synth:llama-3.2-1b@Q4_K_M",
)


def compare(source: str, rounds: int, reps: int, workload: Workload) -> None:
    models = {
        "on": WorkerModel("llamacpp", source, None, 1800, repack=None),
        "off": WorkerModel("llamacpp", source, None, 1800, repack=False),
    }
    try:
        buffers = {k: m.build[PACKAGE]["buffers"] for k, m in models.items()}
        ratios: dict[str, list[float]] = {m: [] for m in METRICS}
        medians: dict[str, dict[str, list[float]]] = {k: {m: [] for m in METRICS} for k in models}
        for r in range(rounds):
            order = ("on", "off") if r % 2 == 0 else ("off", "on")
            got = {}
            for name in order:
                samples = measure(models[name], workload, warmup=1, repetitions=reps).samples
                got[name] = {m: statistics.median(samples[m]) for m in METRICS}
                for m in METRICS:
                    medians[name][m].append(got[name][m])
            for m in METRICS:
                ratios[m].append(got["off"][m] / got["on"][m])
        print(f"\n{source} {workload.label}, {rounds} alternating rounds of {reps} repetitions")
        print(f"  weights on: {', '.join(buffers['on'])}; off: {', '.join(buffers['off'])}")
        print(f"  {'metric':<16}{'repack on':>12}{'repack off':>12}{'off/on':>9}  range")
        for m in METRICS:
            on, off = statistics.median(medians["on"][m]), statistics.median(medians["off"][m])
            low, high = min(ratios[m]), max(ratios[m])
            print(
                f"  {m:<16}{on:>12.4g}{off:>12.4g}{statistics.median(ratios[m]):>9.3f}"
                f"  {low:.3f}..{high:.3f}"
            )
    finally:
        for model in models.values():
            model.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--gen", type=int, default=32)
    args = parser.parse_args()
    started = time.perf_counter()
    for source in args.models:
        compare(source, args.rounds, args.reps, Workload(args.prompt, args.gen))
    print(f"\n({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
