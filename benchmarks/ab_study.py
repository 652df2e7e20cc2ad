"""False alarms and power of the interleaved A/B gate (``mlxperf ab``) against today's rules,
on real processes of this machine.

``collect`` runs ``benchmarks/ab_study_suite.py`` (MLX and llama.cpp, pp128+tg64) in rounds of
three environments, a fresh process each, their order rotating every round:

- ``A`` and ``A2``: the same model (10 layers): an A/A pair, for false alarms;
- ``B``: the same shape with one layer more (11): a real slowdown, whose true size is measured
  here from all rounds together (paired by round), not assumed from the layer count.

``analyze`` replays gates on those processes: each draw takes the rounds in a random order and
runs the sequential procedure of ``mlxperf ab`` on them (judge after ``--min-rounds``, add a
round while a metric is undecided, stop at ``--max-rounds``), and today's rules on the same
processes: ``mlxperf compare`` of one process against one (Mann-Whitney on the repetitions),
the plugin's default (a baseline pooled from 3 processes, a regression confirmed in a fresh
process), and pytest-benchmark's ``--benchmark-compare-fail=min:T`` (best value against best
value). It prints, per metric: the true size of B's slowdown with its interval, the false-alarm
rate on A/A, the power on A/B, the rounds the gate used, and the smallest slowdown the gate can
resolve with 95% power at 5, 10 and 20 rounds (from the measured spread of paired rounds).

    python benchmarks/ab_study.py collect --rounds 16 --out /tmp/abstudy   # ~40 s a round
    python benchmarks/ab_study.py collect --rounds 16 --out /tmp/abllama -k llamacpp
    python benchmarks/ab_study.py analyze /tmp/abstudy --tolerance 5%
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from pathlib import Path

from pytest_mlxperf.gates.ab import ABRun, Environment
from pytest_mlxperf.settings.options import parse_tolerance
from pytest_mlxperf.stats.metrics import METRICS
from pytest_mlxperf.stats.process_stats import compare_processes
from pytest_mlxperf.stats.verdicts import Verdict, compare_metric
from pytest_mlxperf.store.results import load_results

SUITE = str(Path(__file__).with_name("ab_study_suite.py"))
ENVIRONMENTS = {"A": "10", "A2": "10", "B": "11"}
# (measurement key, metric): what the goals name, plus llama.cpp prompt and MLX memory
METRIC_KEYS = [
    ("mlx:study", "prompt_tps"),
    ("mlx:study", "generation_tps"),
    ("llamacpp:study", "prompt_tps"),
    ("llamacpp:study", "generation_tps"),
    ("mlx:study", "peak_memory"),
]
Processes = list[list[float]]


def collect(rounds: int, out: Path, select: str | None) -> None:
    python = Path(sys.executable)
    run = ABRun(
        [
            Environment(name, python, {"STUDY_LAYERS": layers})
            for name, layers in ENVIRONMENTS.items()
        ],
        [SUITE, *(["-k", select] if select else [])],
        out,
        min_rounds=rounds,
        max_rounds=rounds,
        budget_s=float("inf"),
    )
    result = run.run()
    print(result.summary())


def load(folder: Path) -> dict[str, dict[tuple[str, str], Processes]]:
    """Per environment, per (measurement key, metric): each round's samples, in round order;
    under ("canary", kernel) each process's canary samples."""
    out: dict[str, dict[tuple[str, str], Processes]] = {}
    for env in ENVIRONMENTS:
        files = sorted(folder.glob(f"{env}.r*.json"))
        per: dict[tuple[str, str], Processes] = {}
        for path in files:
            records = {key: r for (_, key), r in load_results(path).records.items()}
            for key, metric in METRIC_KEYS:
                if key in records:
                    per.setdefault((key, metric), []).append(records[key]["samples"][metric])
            first = next(iter(records.values()))
            for kernel, samples in (first.get("canary") or {}).items():
                per.setdefault(("canary", kernel), []).append(samples)
        out[env] = per
    return out


def canary_study(data: dict[str, dict[tuple[str, str], Processes]]) -> None:
    """Does a process's canary predict its speed? Correlation, over the processes of each
    environment, between the canary's median and the metric's process median (both as logs,
    centred per environment); and how much of the metric's spread between processes is left
    if each process median is divided by its canary's relative speed."""
    kernels = sorted(k for k in data["A"] if k[0] == "canary")
    if not kernels:
        print("\n(no canary recorded in these results)")
        return
    print("\ncanary vs process speed, per metric (r: correlation of log medians over processes;")
    print("spread: SD of log process medians, raw -> divided by the canary's relative time):")
    for key, metric in (k for k in METRIC_KEYS if k in data["A"]):
        cells = []
        for kernel in kernels:
            xs, ys = [], []
            for env in ENVIRONMENTS:
                canary = [math.log(statistics.median(c)) for c in data[env][kernel]]
                speed = [math.log(statistics.median(p)) for p in data[env][(key, metric)]]
                cx, cy = statistics.fmean(canary), statistics.fmean(speed)
                xs += [c - cx for c in canary]
                ys += [v - cy for v in speed]
            r = statistics.correlation(xs, ys)
            sign = 1 if METRICS[metric].higher_is_better else -1
            adjusted = [y + sign * x for x, y in zip(xs, ys, strict=True)]
            cells.append(
                f"{kernel[1]}: r={r:+.2f}, spread {statistics.stdev(ys):.1%} -> "
                f"{statistics.stdev(adjusted):.1%}"
            )
        print(f"  {key} {metric:<15} " + "; ".join(cells))


def sequential_gate(
    metric: str,
    x: Processes,
    y: Processes,
    order: list[int],
    tol: float,
    args: argparse.Namespace,
    method: str = "t",
) -> tuple[Verdict, int]:
    """``mlxperf ab``'s procedure on rounds taken in ``order``: (verdict, rounds used)."""
    for n in range(args.min_rounds, args.max_rounds + 1):
        rounds = order[:n]
        final = n == args.max_rounds
        c = compare_processes(
            METRICS[metric],
            [x[r] for r in rounds],
            [y[r] for r in rounds],
            tolerance=tol,
            alpha=args.alpha,
            paired=True,
            final=final,
            method=method,
        )
        if c.decided or final:
            return c.verdict, n
    raise AssertionError("unreachable")


def today_compare(
    metric: str, x: Processes, y: Processes, rng: random.Random, tol: float, alpha: float
) -> Verdict:
    """``mlxperf compare`` of one process against another (repetitions as samples)."""
    i, j = rng.sample(range(len(x)), 2)
    return compare_metric(METRICS[metric], x[i], y[j], tolerance=tol, alpha=alpha).verdict


def today_plugin(
    metric: str, x: Processes, y: Processes, rng: random.Random, tol: float, alpha: float
) -> Verdict:
    """The plugin's default: a baseline pooled from 3 processes of X, one process of Y, and a
    regression confirmed by a second, fresh process of Y."""
    picks = rng.sample(range(len(x)), 5)
    baseline = [v for r in picks[:3] for v in x[r]]
    first = compare_metric(METRICS[metric], baseline, y[picks[3]], tolerance=tol, alpha=alpha)
    if first.verdict is not Verdict.REGRESSION:
        return first.verdict
    return compare_metric(
        METRICS[metric], baseline, y[picks[4]], tolerance=tol, alpha=alpha
    ).verdict


def min_rule(metric: str, x: Processes, y: Processes, rng: random.Random, tol: float) -> Verdict:
    """pytest-benchmark's ``--benchmark-compare-fail=min:T``: best value against best value."""
    i, j = rng.sample(range(len(x)), 2)
    m = METRICS[metric]
    best_x = max(x[i]) if m.higher_is_better else min(x[i])
    best_y = max(y[j]) if m.higher_is_better else min(y[j])
    return Verdict.REGRESSION if m.worse_change(best_x, best_y) > tol else Verdict.PASS


def rate(verdicts: list[Verdict], which: Verdict = Verdict.REGRESSION) -> str:
    return f"{sum(v is which for v in verdicts) / len(verdicts):.1%}"


def undecided(verdicts: list[Verdict]) -> str:
    return rate(verdicts, Verdict.INCONCLUSIVE)


def analyze(folder: Path, args: argparse.Namespace) -> None:
    data = load(folder)
    tol = args.tolerance
    present = [k for k in METRIC_KEYS if k in data["A"]]
    n_rounds = len(data["A"][present[0]])
    if n_rounds < args.max_rounds:
        raise SystemExit(f"{folder} has {n_rounds} rounds; --max-rounds is {args.max_rounds}")
    print(
        f"{n_rounds} rounds x {len(ENVIRONMENTS)} environments; tolerance {tol:.0%}, "
        f"alpha {args.alpha}, gate: {args.min_rounds}..{args.max_rounds} rounds, "
        f"{args.draws} draws per pair (A/A both ways)\n"
    )
    header = (
        f"{'metric':<27} {'B vs A (all rounds)':<28} {'rule':<30} {'A/A false alarms':>17} "
        f"{'A/B caught':>11} {'inconclusive (A/A; A/B)':>24} {'rounds used (A/A; A/B)':>23}"
    )
    print(header)
    print("-" * len(header))
    mde_rows = []
    for key, metric in present:
        a, a2, b = data["A"][(key, metric)], data["A2"][(key, metric)], data["B"][(key, metric)]
        m = METRICS[metric]
        true = compare_processes(m, a, b, tolerance=tol, alpha=args.alpha, paired=True)
        size = f"{true.change:+.1%} [{true.low:+.1%}..{true.high:+.1%}]"
        rng = random.Random(args.seed)
        gates: dict[str, tuple[list[Verdict], list[Verdict], list[int], list[int]]] = {
            method: ([], [], [], []) for method in ("t", "rank")
        }
        for _ in range(args.draws):
            order = rng.sample(range(n_rounds), n_rounds)
            for method, (aa, ab, used_aa, used_ab) in gates.items():
                for x, y in ((a, a2), (a2, a)):
                    verdict, used = sequential_gate(metric, x, y, order, tol, args, method)
                    aa.append(verdict)
                    used_aa.append(used)
                verdict, used = sequential_gate(metric, a, b, order, tol, args, method)
                ab.append(verdict)
                used_ab.append(used)
        rules = {
            "ab gate, t (new)": gates["t"][:2],
            "ab gate, rank (new)": gates["rank"][:2],
            "compare 1 vs 1 (today)": (
                [today_compare(metric, a, a2, rng, tol, args.alpha) for _ in range(args.draws)],
                [today_compare(metric, a, b, rng, tol, args.alpha) for _ in range(args.draws)],
            ),
            "plugin: 3 pooled + confirm": (
                [today_plugin(metric, a, a2, rng, tol, args.alpha) for _ in range(args.draws)],
                [today_plugin(metric, a, b, rng, tol, args.alpha) for _ in range(args.draws)],
            ),
            f"pytest-benchmark min:{tol:.0%}": (
                [min_rule(metric, a, a2, rng, tol) for _ in range(args.draws)],
                [min_rule(metric, a, b, rng, tol) for _ in range(args.draws)],
            ),
        }
        for i, (rule, (aa, ab)) in enumerate(rules.items()):
            method = {0: "t", 1: "rank"}.get(i)
            used = (
                f"{statistics.fmean(gates[method][2]):.1f}; "
                f"{statistics.fmean(gates[method][3]):.1f}"
                if method
                else ""
            )
            print(
                f"{f'{key} {metric}' if i == 0 else '':<27} {size if i == 0 else '':<28} "
                f"{rule:<30} {rate(aa):>17} {rate(ab):>11} "
                f"{undecided(aa) + '; ' + undecided(ab):>24} {used:>23}"
            )
        # spread of paired A/A rounds: what any paired rule works against
        d = [
            math.log(statistics.median(y) / statistics.median(x))
            for x, y in zip(a, a2, strict=True)
        ]
        sd = statistics.stdev(d)
        mde_rows.append(
            (
                f"{key} {metric}",
                sd,
                [mde(sd, n, tol, args.alpha, m.higher_is_better) for n in (5, 10, 20)],
            )
        )
    print(
        f"\nsmallest worsening the ab gate resolves with 95% power (tolerance {tol:.0%}), from "
        "the spread of paired A/A rounds:"
    )
    print(
        f"{'metric':<27} {'SD of ln(A2/A)':>15} {'5 rounds':>9} {'10 rounds':>10} {'20 rounds':>10}"
    )
    for name, sd, values in mde_rows:
        print(f"{name:<27} {sd:>15.2%} " + " ".join(f"{v:>9.1%}" for v in values))
    canary_study(data)


def mde(sd: float, n: int, tol: float, alpha: float, higher_is_better: bool) -> float:
    """Worsening caught with 95% power by the paired t rule with ``n`` rounds (sd of the log
    ratios), beyond the tolerance boundary."""
    from scipy.stats import norm, t

    limit = -math.log(1 - tol) if higher_is_better else math.log(1 + tol)
    log_mde = limit + (t.ppf(1 - alpha, n - 1) + norm.ppf(0.95)) * sd / math.sqrt(n)
    return 1 - math.exp(-log_mde) if higher_is_better else math.exp(log_mde) - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--rounds", type=int, default=16)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("-k", dest="select", help="pytest -k selection, e.g. llamacpp")
    a = sub.add_parser("analyze")
    a.add_argument("folder", type=Path)
    a.add_argument("--tolerance", type=parse_tolerance, default=0.05)
    a.add_argument("--alpha", type=float, default=0.01)
    a.add_argument("--min-rounds", type=int, default=3)
    a.add_argument("--max-rounds", type=int, default=10)
    a.add_argument("--draws", type=int, default=200)
    a.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.command == "collect":
        collect(args.rounds, args.out, args.select)
    else:
        analyze(args.folder, args)


if __name__ == "__main__":
    main()
