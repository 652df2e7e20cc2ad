"""How often does the gate cry wolf, and how much does it catch? Measured, on real runs.

Phase 1 (``collect``) runs the real backends on the tiny synthetic model in many *separate
processes* (the spread that matters is between processes: a baseline is recorded in one and
compared in another) and stores every repetition's metrics; some configurations are real
slowdowns of the reference (fewer llama.cpp threads, a heavier quantization, a competing
busy process). Phase 2 (``analyze``) replays the verdict rules on those samples:

- ours: one-sided Mann-Whitney U against the tolerance-shifted baseline (``compare_metric``),
  with a baseline from 1 process, or pooled from 3 (``--mlxperf-baseline-runs``), with and
  without the confirmation re-measurement;
- pytest-benchmark ``--benchmark-compare-fail=min:T`` (best single value, no statistics);
- compare-llama-bench.py / mlx_lm.benchmark style: mean of the run vs mean of the baseline.

False-alarm rate: A/A pairs of processes of the same configuration. Power: the current samples
scaled down by 5/10/20% (resampling real samples), and the real slowdowns.

Usage:
  python benchmarks/verdict_study.py collect --processes 12 --out /tmp/verdict.json
  python benchmarks/verdict_study.py analyze /tmp/verdict.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from pytest_mlxperf.stats.metrics import METRICS
from pytest_mlxperf.stats.verdicts import Verdict, compare_metric

REPS = 5
SLOWDOWNS = (0.05, 0.10, 0.20, 0.30, 0.50)
METRIC_NAMES = ("prompt_tps", "generation_tps")
# name → (backend, source, workload fields, competing busy process)
CONFIGS = {
    "llamacpp": ("llamacpp", "synth:tiny", {}, False),
    "llamacpp-1thread": ("llamacpp", "synth:tiny", {"threads": 1}, False),
    "llamacpp-Q8_0": ("llamacpp", "synth:tiny@Q8_0", {}, False),
    "llamacpp-busy": ("llamacpp", "synth:tiny", {}, True),
    "mlx": ("mlx", "synth:tiny", {}, False),
    "mlx-8bit": ("mlx", "synth:tiny@8bit", {}, False),
    "mlx-busy": ("mlx", "synth:tiny", {}, True),
}
REAL_SLOWDOWNS = {
    "llamacpp": ("llamacpp-1thread", "llamacpp-Q8_0", "llamacpp-busy"),
    "mlx": ("mlx-8bit", "mlx-busy"),
}
WORKLOAD = {"prompt_tokens": 128, "generation_tokens": 64}


def _one_process(config: str) -> dict[str, list[float]]:
    """Run in a fresh interpreter: load, warm up, REPS timed repetitions."""
    code = (
        "import json, sys\n"
        "from pytest_mlxperf.backends import load\n"
        "from pytest_mlxperf.measuring.measure import measure\n"
        "from pytest_mlxperf.measuring.workload import Workload\n"
        f"backend, source, extra = {CONFIGS[config][0]!r}, {CONFIGS[config][1]!r}, "
        f"{CONFIGS[config][2]!r}\n"
        "m = load(backend, source)\n"
        f"r = measure(m, Workload(**{WORKLOAD!r}, **extra), warmup=1, repetitions={REPS})\n"
        "print('SAMPLES' + json.dumps(r.samples))\n"
    )
    busy = None
    if CONFIGS[config][3]:
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    finally:
        if busy is not None:
            busy.kill()
    line = next(x for x in out.splitlines() if x.startswith("SAMPLES"))
    return json.loads(line[len("SAMPLES") :])


def collect(processes: int, out: Path) -> None:
    data: dict[str, list[dict[str, list[float]]]] = {c: [] for c in CONFIGS}
    t0 = time.perf_counter()
    # interleave configurations so slow drift of the machine hits them all alike
    for i in range(processes):
        for config in CONFIGS:
            data[config].append(_one_process(config))
        print(f"round {i + 1}/{processes} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    out.write_text(json.dumps({"reps": REPS, "workload": WORKLOAD, "runs": data}, indent=1))


# ----------------------------------------------------------------------------- the rules


def ours(base: list[list[float]], cur: list[list[float]], metric: str, tol: float) -> bool:
    """Regression by our rule: pooled baseline runs vs the first current run; with two current
    runs, the second is the confirmation and must regress too."""
    pooled = [v for run in base for v in run]
    return all(
        compare_metric(METRICS[metric], pooled, run, tolerance=tol, alpha=0.01).verdict
        is Verdict.REGRESSION
        for run in cur
    )


def best_single(base: list[list[float]], cur: list[list[float]], metric: str, tol: float) -> bool:
    """pytest-benchmark compare-fail=min:T (min time = max tokens/s), one baseline run."""
    return max(cur[0]) < max(base[-1]) * (1 - tol)


def mean_only(base: list[list[float]], cur: list[list[float]], metric: str, tol: float) -> bool:
    """compare-llama-bench / mlx_lm.benchmark: mean of the run against the baseline mean."""
    return statistics.fmean(cur[0]) < statistics.fmean(base[-1]) * (1 - tol)


RULES = {
    # name → (rule, baseline processes, current processes)
    "ours: 1-run baseline": (ours, 1, 1),
    "ours: 3 pooled runs": (ours, 3, 1),
    "ours: 3 pooled + confirm (default)": (ours, 3, 2),
    "pytest-benchmark min:T": (best_single, 1, 1),
    "mean only (llama-bench/mlx_lm)": (mean_only, 1, 1),
}


def _trials(runs: list[list[float]], n_base: int, n_cur: int, draws: int = 400):
    """Random disjoint (baseline processes, current processes) draws from one configuration."""
    rng = random.Random(0)
    for _ in range(draws):
        order = rng.sample(range(len(runs)), n_base + n_cur)
        yield [runs[i] for i in order[:n_base]], [runs[i] for i in order[n_base:]]


def rate(rule, n_base, n_cur, base_runs, cur_runs, metric, tol, factor=1.0):
    hits = total = 0
    if n_base + (n_cur if cur_runs is base_runs else 0) > len(base_runs) or n_cur > len(cur_runs):
        return float("nan"), 0
    if cur_runs is base_runs:
        draws = _trials(base_runs, n_base, n_cur)
    else:  # a real slowdown: baselines from the reference, current runs from the slower config
        draws = (
            (b, c)
            for (b, _), (c, _) in zip(
                _trials(base_runs, n_base, 0), _trials(cur_runs, n_cur, 0), strict=False
            )
        )
    for base, cur in draws:
        cur = [[v * factor for v in run] for run in cur]
        hits += rule(base, cur, metric, tol)
        total += 1
    return hits / total if total else float("nan"), total


def analyze(path: Path, tolerance: float) -> None:
    data = json.loads(Path(path).read_text())["runs"]
    per_run = {c: {m: [run[m] for run in runs] for m in METRIC_NAMES} for c, runs in data.items()}
    print(
        f"tolerance {tolerance:.0%}, alpha 0.01, {REPS} repetitions per process, "
        f"{len(next(iter(data.values())))} processes per configuration\n"
    )
    for ref, slow in REAL_SLOWDOWNS.items():
        for metric in METRIC_NAMES:
            base = per_run[ref][metric]
            medians = [statistics.median(r) for r in base]
            spread = (max(medians) - min(medians)) / statistics.median(medians)
            print(
                f"== {ref} {metric}: process medians {min(medians):.0f}..{max(medians):.0f} "
                f"(spread {spread:.0%})"
            )
            real = {
                s: statistics.median(statistics.median(r) for r in per_run[s][metric])
                / statistics.median(medians)
                - 1
                for s in slow
            }
            head = ["rule", "false alarms", *(f"{s:.0%} slower" for s in SLOWDOWNS)]
            head += [f"{s} ({real[s]:+.0%})" for s in slow]
            rows = []
            for name, (rule, nb, nc) in RULES.items():
                fa, n_fa = rate(rule, nb, nc, base, base, metric, tolerance)
                row = [name, f"{fa:.1%} (n={n_fa})"]
                for s in SLOWDOWNS:
                    p, _ = rate(rule, nb, nc, base, base, metric, tolerance, 1 - s)
                    row.append(f"{p:.0%}")
                for s in slow:
                    p, n = rate(rule, nb, nc, base, per_run[s][metric], metric, tolerance)
                    row.append(f"{p:.0%} (n={n})")
                rows.append(row)
            widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
            for r in [head, *rows]:
                print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
            print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--processes", type=int, default=12)
    c.add_argument("--out", type=Path, default=Path("/tmp/verdict.json"))
    a = sub.add_parser("analyze")
    a.add_argument("path", type=Path)
    a.add_argument("--tolerance", type=float, default=0.10)
    args = parser.parse_args()
    if args.cmd == "collect":
        collect(args.processes, args.out)
    else:
        analyze(args.path, args.tolerance)


if __name__ == "__main__":
    main()
