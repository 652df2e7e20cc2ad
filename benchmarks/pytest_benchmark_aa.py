"""A/A false alarms on a real pytest-benchmark suite: pytest-benchmark's own gate
(``--benchmark-compare-fail=min:T``) against pytest-mlxperf's gate on the same rounds.

Phase 1 (``collect``) runs a small pytest-benchmark suite in many *separate processes*, each
with ``--benchmark-json`` (every round's time is kept): tokenizing a paragraph with the
synthetic model's tokenizer (``tokenizers``, Rust), and a pure-Python function. Nothing
changes between processes, so every alarm is a false one. Each benchmark runs twice in every
process (``test_x`` and ``test_x_again``): the second stands in for the re-measurement that
confirms a regression, which pytest-mlxperf takes in the same process right after the first.

Phase 2 (``analyze``) replays the rules on those rounds:

- pytest-benchmark ``min:T``: the current process's fastest round against one earlier
  process's (``--benchmark-compare`` loads one saved run); ordered pairs of processes;
- pytest-mlxperf, as ``pytest --mlxperf`` gates a ``benchmark`` fixture: the rounds cut into
  5 blocks (``--mlxperf-repetitions``), one sample per block (its median); a baseline pooled
  from 3 processes (record three baseline runs, as the README advises); the one-sided
  Mann-Whitney test against the tolerance-shifted baseline; a regression counts if the
  confirmation regresses too. Also shown: without the confirmation, and with every raw round
  as a sample (what feeding pytest-benchmark's rounds straight to the test would do).

Power: the same draws with the current rounds slowed by 10/20/50% (scaled).

Usage:
  python benchmarks/pytest_benchmark_aa.py collect --processes 20 --out /tmp/pb_aa
  python benchmarks/pytest_benchmark_aa.py analyze /tmp/pb_aa
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from pytest_mlxperf.measuring.callables import block_medians
from pytest_mlxperf.stats.metrics import METRICS
from pytest_mlxperf.stats.verdicts import Verdict, compare_metric

BLOCKS = 5  # --mlxperf-repetitions' default: samples per measurement
BASELINE_RUNS = 3  # processes pooled into the baseline (--baseline-runs)
ALPHA = 0.01
TOLERANCES = (0.05, 0.10)
SLOWDOWNS = (0.10, 0.20, 0.50)
BENCHMARKS = ("test_tokenize", "test_python")

SUITE = """
import os

from tokenizers import Tokenizer

TOKENIZER = Tokenizer.from_file(os.environ["AA_TOKENIZER"])
TEXT = (
    "Local inference engines stream tokens as soon as they are sampled; the glue around the "
    "model (templating, tokenizing, post-processing) must stay fast enough not to show. "
) * 2
WORDS = TEXT.split()


def tokenize():
    return TOKENIZER.encode(TEXT).ids


def python_work():
    counts = {}
    for word in WORDS:
        key = word.strip(".,;()").lower()
        counts[key] = counts.get(key, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:10]


def test_tokenize(benchmark):
    benchmark(tokenize)


def test_tokenize_again(benchmark):
    benchmark(tokenize)


def test_python(benchmark):
    benchmark(python_work)


def test_python_again(benchmark):
    benchmark(python_work)
"""


def _tokenizer() -> Path:
    from pytest_mlxperf import synth

    return synth.build("mlx", "tiny", "4bit") / "tokenizer.json"


def collect(processes: int, out: Path, max_time: float, busy: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "test_aa_suite.py").write_text(textwrap.dedent(SUITE), encoding="utf-8")
    env = {**os.environ, "AA_TOKENIZER": str(_tokenizer())}
    t0 = time.perf_counter()
    for i in range(processes):
        result = out / f"process_{i:03d}.json"
        # --busy: every other process shares the machine with a CPU-bound neighbour, as on
        # a shared CI runner (the code measured is the same: still A/A)
        neighbour = None
        if busy and i % 2:
            neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            _run_suite(out, result, max_time, env)
        finally:
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()
        print(f"process {i + 1}/{processes} ({time.perf_counter() - t0:.0f} s)", flush=True)


def _run_suite(out: Path, result: Path, max_time: float, env: dict[str, str]) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "test_aa_suite.py",
            f"--benchmark-json={result.name}",
            f"--benchmark-max-time={max_time}",
        ],
        cwd=out,
        env=env,
        check=True,
        capture_output=True,
    )


def _load(folder: Path) -> dict[str, list[list[float]]]:
    """Per test name, the rounds (per-call seconds) of every process, in process order."""
    runs: dict[str, list[list[float]]] = {}
    for path in sorted(folder.glob("process_*.json")):
        for bench in json.loads(path.read_text(encoding="utf-8"))["benchmarks"]:
            runs.setdefault(bench["name"], []).append(bench["stats"]["data"])
    return runs


# ----------------------------------------------------------------------------- the rules

Rule = Callable[[list[list[float]], list[float], list[float], float], bool]


def _regresses(base: list[float], current: list[float], tolerance: float) -> bool:
    verdict = compare_metric(
        METRICS["duration"], base, current, tolerance=tolerance, alpha=ALPHA
    ).verdict
    return verdict is Verdict.REGRESSION


def ours(base: list[list[float]], cur: list[float], again: list[float], tol: float) -> bool:
    pooled = [s for run in base for s in block_medians(run, BLOCKS)]
    return _regresses(pooled, block_medians(cur, BLOCKS), tol) and _regresses(
        pooled, block_medians(again, BLOCKS), tol
    )


def ours_unconfirmed(
    base: list[list[float]], cur: list[float], again: list[float], tol: float
) -> bool:
    pooled = [s for run in base for s in block_medians(run, BLOCKS)]
    return _regresses(pooled, block_medians(cur, BLOCKS), tol)


def ours_raw_rounds(
    base: list[list[float]], cur: list[float], again: list[float], tol: float
) -> bool:
    pooled = [s for run in base for s in run]
    return _regresses(pooled, cur, tol) and _regresses(pooled, again, tol)


def pytest_benchmark_min(
    base: list[list[float]], cur: list[float], again: list[float], tol: float
) -> bool:
    return min(cur) > min(base[-1]) * (1 + tol)


def rules(baseline_runs: int) -> dict[str, tuple[Rule, int]]:
    """name -> (rule, baseline processes)"""
    return {
        f"pytest-mlxperf: {baseline_runs} pooled runs + confirm": (ours, baseline_runs),
        "pytest-mlxperf, no confirmation": (ours_unconfirmed, baseline_runs),
        "pytest-mlxperf on every raw round": (ours_raw_rounds, baseline_runs),
        "pytest-benchmark compare-fail=min:T": (pytest_benchmark_min, 1),
    }


def _rate(
    rule: Rule,
    processes: list[list[float]],
    again: list[list[float]],
    n_base: int,
    tol: float,
    draws: int,
    slowdown: float,
    rng: random.Random,
) -> tuple[float, int]:
    """Share of alarms over ``draws`` draws per current process, of disjoint processes."""
    alarms = total = 0
    for c in range(len(processes)):
        others = [i for i in range(len(processes)) if i != c]
        if len(others) < n_base:
            continue
        cur = [v * (1 + slowdown) for v in processes[c]]
        cur_again = [v * (1 + slowdown) for v in again[c]]
        for _ in range(draws):
            base = [processes[i] for i in rng.sample(others, n_base)]
            alarms += rule(base, cur, cur_again, tol)
            total += 1
    return alarms / total if total else 0.0, total


def analyze(folder: Path, draws: int, seed: int, baseline_runs: int) -> None:
    runs = _load(folder)
    n = len(runs[BENCHMARKS[0]])
    print(f"{n} processes; alpha {ALPHA}; {BLOCKS} samples per measurement; {draws} draws each")
    for name in BENCHMARKS:
        first, again = runs[name], runs[f"{name}_again"]
        medians = sorted(sorted(r)[len(r) // 2] for r in first)
        mins = sorted(min(r) for r in first)
        print(
            f"\n== {name}: {len(first[0])} rounds/process; process medians "
            f"{medians[0] * 1e6:.2f}..{medians[-1] * 1e6:.2f} us "
            f"(spread {medians[-1] / medians[0] - 1:.0%}), process minima spread "
            f"{mins[-1] / mins[0] - 1:.0%}"
        )
        header = ["rule", "tolerance", "false alarms", *(f"{s:.0%} slower" for s in SLOWDOWNS)]
        rows = []
        for label, (rule, n_base) in rules(baseline_runs).items():
            for tol in TOLERANCES:
                rng = random.Random(seed)
                aa, total = _rate(rule, first, again, n_base, tol, draws, 0.0, rng)
                power = [
                    _rate(rule, first, again, n_base, tol, draws, s, random.Random(seed))[0]
                    for s in SLOWDOWNS
                ]
                rows.append(
                    [label, f"{tol:.0%}", f"{aa:.1%} (n={total})", *(f"{p:.0%}" for p in power)]
                )
        widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="run the suite in separate processes")
    c.add_argument("--processes", type=int, default=20)
    c.add_argument("--out", type=Path, required=True, help="folder for the suite and results")
    c.add_argument(
        "--max-time", type=float, default=1.0, help="--benchmark-max-time (its default: 1.0)"
    )
    c.add_argument(
        "--busy", action="store_true", help="a CPU-bound neighbour beside every other process"
    )
    a = sub.add_parser("analyze", help="replay the rules on the collected rounds")
    a.add_argument("folder", type=Path)
    a.add_argument("--draws", type=int, default=20, help="baseline draws per current process")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument(
        "--baseline-runs", type=int, default=BASELINE_RUNS, help="processes pooled as baseline"
    )
    args = parser.parse_args()
    if args.command == "collect":
        collect(args.processes, args.out, args.max_time, args.busy)
    else:
        analyze(args.folder, args.draws, args.seed, args.baseline_runs)


if __name__ == "__main__":
    main()
