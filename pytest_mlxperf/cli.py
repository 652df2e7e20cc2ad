"""The ``mlxperf`` command: ``mlxperf synth`` builds synthetic models; ``mlxperf machine`` is a
first look at a machine (the fingerprint baselines are keyed on, each backend's build and a
smoke test); ``mlxperf compare``, ``mlxperf report`` and ``mlxperf export`` turn results files
(``pytest --mlxperf --mlxperf-json PATH``, e.g. one per mlx version of a tox matrix) into a
verdict table, an HTML report and other tools' formats; ``mlxperf ab`` gates one environment
against another in interleaved rounds of fresh processes; ``mlxperf bisect`` finds the release
of a package that changed a suite's numbers.

Exit status: 0 fine, 1 a regression found (``compare``, ``ab``), a smoke test failed
(``machine``) or no release found (``bisect``), 2 bad input (message on stderr)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_mlxperf import __version__
from pytest_mlxperf.host import machine
from pytest_mlxperf.settings.options import OPTIONS_BY_NAME, argparse_type

if TYPE_CHECKING:
    from pytest_mlxperf.gates.comparison import Comparison


def _machine(args: argparse.Namespace) -> int:
    """The fingerprint, then each backend's versions, build and smoke test (``smoke``); exit 1
    when an installed backend fails its smoke test."""
    from pytest_mlxperf.backends import BACKENDS
    from pytest_mlxperf.backends.smoke import smoke
    from pytest_mlxperf.host.packages import BACKEND_PACKAGES, versions, versions_label

    fp = machine.fingerprint(args.name)
    installed = machine.package_versions()
    shown: dict[str, Any] = {"machine_id": machine.machine_id(fp), "fingerprint": fp}
    amx = sorted(f for f in machine.cpu_flags() if f.startswith("amx"))
    lines = [f"machine {shown['machine_id']}: {json.dumps(fp)}"]
    if amx:
        lines.append(f"  CPU has AMX ({' '.join(amx)}): see README, Known backend problems")
    shown["backends"] = {}
    for name in args.backend or BACKENDS:
        packages = {p: installed[p] for p in BACKEND_PACKAGES[name] if p in installed}
        result = smoke(name) if not args.no_smoke else None
        build = result.build if result is not None else {}
        shown_versions = versions({"packages": packages, "builds": build})
        shown["backends"][name] = {
            "versions": shown_versions,
            "smoke": result.to_json() if result is not None else None,
        }
        lines.append(f"{name}: {versions_label(shown_versions)}")
        for facts in build.values():
            lines.append(f"  build: {facts['system_info']}")
            lines.append(f"  weights: {', '.join(facts['buffers']) or 'unknown'}")
        if result is not None:
            lines.append("  smoke test: " + result.describe().replace("\n", "\n    "))
    print(json.dumps(shown, indent=2) if args.json else "\n".join(lines))
    failed = [
        r["smoke"]
        for r in shown["backends"].values()
        if r["smoke"] is not None and r["smoke"]["ok"] is False
    ]
    return 1 if failed else 0


def _comparison(args: argparse.Namespace) -> Comparison:
    from pytest_mlxperf.gates.comparison import compare_files, resolve_reference
    from pytest_mlxperf.store.results import load_results

    files = [load_results(path) for path in args.results]
    reference = resolve_reference(args.results, args.reference)
    return compare_files(files, reference, args.tolerance, args.alpha, pool=args.pool)


def _name_value(spec: str) -> tuple[str, str]:
    """``--env NAME=PYTHON`` as a pair; a bad form fails at parse time."""
    name, sep, value = spec.partition("=")
    if not sep or not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=PYTHON, got {spec!r}")
    return name, value


def _ab(args: argparse.Namespace) -> int:
    from pytest_mlxperf.gates.ab import ABError, ABRun, Environment, tox_environment
    from pytest_mlxperf.render.html import html_report
    from pytest_mlxperf.render.markdown import markdown
    from pytest_mlxperf.render.text import text_table
    from pytest_mlxperf.stats.verdicts import Verdict
    from pytest_mlxperf.store.files import atomic_write

    environments = [Environment(name, Path(python)) for name, python in args.env]
    environments += [tox_environment(name, args.tox_dir) for name in args.tox]
    variables: dict[str, dict[str, str]] = {}
    by_name = {e.name: e for e in environments}
    for spec in args.set:
        name, _, assignment = spec.partition(":")
        key, sep, value = assignment.partition("=")
        if name not in by_name or not sep or not key:
            raise ABError(
                f"--set {spec!r}: expected ENV:KEY=VALUE with ENV one of "
                f"{', '.join(by_name) or 'the environments'}"
            )
        variables.setdefault(name, {})[key] = value
    environments = [
        Environment(e.name, e.python, {**e.variables, **variables.get(e.name, {})})
        for e in environments
    ]
    if args.tox and "MLXPERF_CACHE_DIR" not in os.environ:
        # tox.ini's environments share one model cache; so must their processes here
        os.environ["MLXPERF_CACHE_DIR"] = str((args.tox_dir / "mlxperf-cache").resolve())
    run = ABRun(
        environments,
        args.pytest_args,
        args.out,
        min_rounds=args.min_rounds,
        max_rounds=args.max_rounds,
        budget_s=args.budget * 60,
        order=args.order,
        seed=args.seed,
        tolerances=args.tolerance,
        alpha=args.alpha,
        process_timeout_s=args.process_timeout,
        say=lambda line: print(line, flush=True),
    )
    result = run.run()
    comparison = result.comparison
    print(text_table(comparison))
    print(result.summary())
    atomic_write(args.out / "report.html", html_report(comparison))
    atomic_write(args.out / "report.md", markdown(comparison))
    print(f"results, ab.json, report.html and report.md in {args.out}")
    failed = comparison.regressions or (args.strict and comparison.cells(Verdict.INCONCLUSIVE))
    return 1 if failed else 0


def _compare(args: argparse.Namespace) -> int:
    from pytest_mlxperf.render.markdown import markdown
    from pytest_mlxperf.render.text import text_table
    from pytest_mlxperf.store.results import InputError

    if len(args.results) < 2:
        raise InputError("compare needs at least two results files")
    comparison = _comparison(args)
    print(markdown(comparison) if args.markdown else text_table(comparison))
    return 1 if comparison.regressions else 0


def _report(args: argparse.Namespace) -> int:
    from pytest_mlxperf.render.html import html_report
    from pytest_mlxperf.render.markdown import markdown
    from pytest_mlxperf.store.files import atomic_write

    comparison = _comparison(args)
    atomic_write(args.output, html_report(comparison))
    print(f"HTML report written to {args.output}")
    if args.markdown:
        atomic_write(args.markdown, markdown(comparison))
        print(f"Markdown written to {args.markdown}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from pytest_mlxperf.render.exports import export
    from pytest_mlxperf.store.results import load_results, write_json

    document = export(load_results(args.results), args.format)
    write_json(args.output, document)
    print(f"{args.format} written to {args.output}")
    return 0


def _bisect(args: argparse.Namespace) -> int:
    from pytest_mlxperf.gates.bisect import (
        BisectError,
        BisectRun,
        EnvironmentCache,
        all_groups_comparison,
        default_env_root,
    )
    from pytest_mlxperf.render.bisect import bisect_markdown, bisect_table
    from pytest_mlxperf.render.html import html_report
    from pytest_mlxperf.store.files import atomic_write

    cache = EnvironmentCache(args.env_dir or default_env_root(), args.project, args.extras)
    if args.clean:
        print(f"removed {cache.clean()} environment(s) from {cache.root}")
        return 0
    if not (args.package and args.good and args.bad):
        raise BisectError("bisect needs PACKAGE GOOD BAD (or --clean)")
    run = BisectRun(
        args.package,
        args.good,
        args.bad,
        args.pin,
        args.pytest_args,
        args.out,
        cache,
        metric=args.metric,
        pins_if=[tuple(p) for p in args.pin_if],
        tolerances=args.tolerance,
        alpha=args.alpha,
        min_rounds=args.min_rounds,
        max_rounds=args.max_rounds,
        budget_s=args.budget * 60,
        say=lambda line: print(line, flush=True),
    )
    result = run.run()
    print(bisect_table(result))
    print(result.summary())
    print(
        f"{result.environments_built} gate(s) run in {result.seconds / 60:.1f} min; "
        f"state: {run.state_path}"
    )
    command = "mlxperf " + shlex.join(sys.argv[1:])
    held = ", ".join([*args.pin, *(f"{req} (for {spec})" for spec, req in args.pin_if)])
    atomic_write(
        args.out / "issue.md",
        bisect_markdown(
            result, machine.machine_id(machine.fingerprint()), command, held or "nothing"
        ),
    )
    comparison = all_groups_comparison(run)
    if comparison is not None:
        atomic_write(args.out / "report.html", html_report(comparison))
    print(f"issue.md and report.html in {args.out}")
    return 0 if result.first_differs else 1


def _add_results_parsers(sub: argparse._SubParsersAction) -> None:
    tolerance, alpha = OPTIONS_BY_NAME["tolerance"], OPTIONS_BY_NAME["alpha"]
    # what --alpha is the level of (comparison.py, process_stats.py): the plugin's test on
    # samples of one process, or a t-test with the process as the unit
    mann_whitney = "the one-sided Mann-Whitney U test"
    t_test = (
        "t-test of the log ratio of per-process medians (a regression when its one-sided "
        "1-ALPHA confidence bound lies beyond the tolerance)"
    )
    difference = f"memory growth (a difference near zero) by {mann_whitney} on all samples"
    by_file = (
        f"significance level of {mann_whitney} on the two files' samples; with --pool and 2 "
        f"or more files on both sides, of a {t_test}, paired file by file when the sides have "
        f"as many files, else Welch's; {difference}"
    )
    by_round = f"significance level of a {t_test}, paired by round; {difference}"

    def judged(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("results", nargs="+", type=Path, help="results files (JSON)")
        parser.add_argument(
            "--reference",
            metavar="FILE_OR_INDEX",
            help="the file the others are judged against: one of RESULTS, or its 1-based "
            "position (-1: the last); default: the first",
        )
        judging(parser, by_file)

    def judging(parser: argparse.ArgumentParser, alpha_help: str) -> None:
        parser.add_argument(
            "--tolerance",
            type=argparse_type(tolerance),
            default={},
            metavar=tolerance.metavar,
            help=f"{tolerance.help} (default: the test's own, else {tolerance.shown_default})",
        )
        parser.add_argument(
            "--alpha",
            type=argparse_type(alpha),
            default=alpha.default,
            metavar=alpha.metavar,
            help=f"{alpha_help} (default {alpha.default})",
        )

    def rounds(parser: argparse.ArgumentParser, max_rounds: int) -> None:
        """The A/B gate's bounds: rounds before deciding, rounds at most, minutes."""
        parser.add_argument("--min-rounds", type=int, default=3, help="rounds before deciding (3)")
        parser.add_argument(
            "--max-rounds", type=int, default=max_rounds, help=f"rounds at most ({max_rounds})"
        )
        parser.add_argument(
            "--budget", type=float, default=10.0, metavar="MINUTES", help="minutes (10)"
        )

    def pooled(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--pool",
            action="store_true",
            help="pool files of the same machine and package versions into one side (separate "
            "processes: repeated runs, rounds) and judge with the process as the unit; two "
            "sides of equal size are paired file by file, in the order given",
        )

    compare = sub.add_parser(
        "compare",
        help="side-by-side verdicts of results files against a reference; exit 1 on regression",
        description="Line up the same measurements across results files and judge each file "
        "against the reference with the plugin's rules. Exit 1 if any regression is found.",
    )
    judged(compare)
    pooled(compare)
    compare.add_argument("--markdown", action="store_true", help="print a Markdown table")
    compare.set_defaults(func=_compare)

    report = sub.add_parser(
        "report",
        help="write a self-contained HTML report (plots of every sample) of results files",
    )
    judged(report)
    pooled(report)
    report.add_argument("-o", "--output", type=Path, required=True, help="HTML file to write")
    report.add_argument("--markdown", type=Path, metavar="FILE", help="also write Markdown here")
    report.set_defaults(func=_report)

    ab = sub.add_parser(
        "ab",
        help="interleaved A/B gate: run a perf suite in rounds across Python environments "
        "(fresh process each), judged by process; exit 1 on a regression",
        description="Run a perf suite alternately in two or more Python environments (tox "
        "environments or interpreters), a fresh process per environment per round, and judge "
        "every other environment against the first with the process as the unit. Rounds are "
        "added until every gated metric is decided or the budget is spent. Everything after "
        "-- goes to pytest, e.g.: mlxperf ab --tox mlx030 --tox mlx032 --tolerance 5% -- "
        "tests/perf/test_example_perf.py",
    )
    ab.add_argument(
        "--env",
        type=_name_value,
        action="append",
        default=[],
        metavar="NAME=PYTHON",
        help="an environment: a name and its Python interpreter (repeatable; the first one "
        "given, --env before --tox, is the reference)",
    )
    ab.add_argument(
        "--tox", action="append", default=[], metavar="ENV", help="a tox environment by name"
    )
    ab.add_argument("--tox-dir", type=Path, default=Path(".tox"), help="tox's work dir (.tox)")
    ab.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="ENV:KEY=VALUE",
        help="an environment variable for one environment's processes (repeatable)",
    )
    judging(ab, by_round)
    rounds(ab, max_rounds=10)
    ab.add_argument(
        "--order",
        choices=("alternate", "random"),
        default="alternate",
        help="environments' order per round: alternate (AB BA AB ...) or random (seeded)",
    )
    ab.add_argument("--seed", type=int, default=0, help="seed of --order random (0)")
    ab.add_argument(
        "--process-timeout",
        type=float,
        default=1800.0,
        metavar="SECONDS",
        help="stop a process of the suite after this long (1800)",
    )
    ab.add_argument(
        "--out", type=Path, default=Path("results/ab"), help="folder for results (results/ab)"
    )
    ab.add_argument(
        "--strict", action="store_true", help="also exit 1 when a metric stays inconclusive"
    )
    ab.add_argument("pytest_args", nargs="*", metavar="-- PYTEST_ARGS", help="the perf suite")
    ab.set_defaults(func=_ab)

    bisect = sub.add_parser(
        "bisect",
        help="find the release of a package that changed a perf suite's numbers",
        description="Binary-search the releases of PACKAGE between GOOD and BAD for the first "
        "one whose interleaved A/B verdict against GOOD differs (a regression or an "
        "improvement of the metrics that differ at BAD). Each candidate gets its own cached "
        "environment: the candidate, the --pin requirements and this pytest-mlxperf. "
        "Everything after -- goes to pytest, e.g.: mlxperf bisect mlx-lm 0.26.4 0.32.2 "
        "--pin 'mlx[cpu]==0.32.4' -- tests/perf/test_example_perf.py -k mlx. "
        "Exit 0 when the release is found, 1 when not, 2 on bad input.",
    )
    bisect.add_argument("package", nargs="?", help="the package whose releases are searched")
    bisect.add_argument("good", nargs="?", help="a version without the change")
    bisect.add_argument("bad", nargs="?", help="a version with it")
    bisect.add_argument(
        "--pin",
        action="append",
        default=[],
        metavar="REQUIREMENT",
        help="a requirement installed with every candidate, e.g. 'mlx[cpu]==0.32.4' (repeatable)",
    )
    bisect.add_argument(
        "--pin-if",
        nargs=2,
        action="append",
        default=[],
        metavar=("SPECIFIER", "REQUIREMENT"),
        help="a requirement for the candidates whose version matches SPECIFIER, e.g. "
        "--pin-if '<0.30' 'transformers<5' (repeatable)",
    )
    bisect.add_argument("--metric", help="follow only this metric (default: all that differ)")
    judging(bisect, by_round)
    rounds(bisect, max_rounds=8)
    bisect.add_argument(
        "--out", type=Path, default=Path("results/bisect"), help="folder for state and results"
    )
    bisect.add_argument("--project", type=Path, default=Path("."), help="pytest-mlxperf to install")
    bisect.add_argument("--extras", default="synth", help="its extras to install (synth)")
    bisect.add_argument("--env-dir", type=Path, help="environment cache (MODEL_CACHE/envs)")
    bisect.add_argument("--clean", action="store_true", help="empty the environment cache")
    bisect.add_argument("pytest_args", nargs="*", metavar="-- PYTEST_ARGS", help="the perf suite")
    bisect.set_defaults(func=_bisect)

    export = sub.add_parser(
        "export", help="convert a results file to Bencher (BMF) or pytest-benchmark JSON"
    )
    export.add_argument("results", type=Path, help="a results file (JSON)")
    export.add_argument("--format", required=True, choices=("bmf", "pytest-benchmark"))
    export.add_argument("-o", "--output", type=Path, required=True, help="file to write")
    export.set_defaults(func=_export)


def build_parser() -> argparse.ArgumentParser:
    from pytest_mlxperf import synth

    parser = argparse.ArgumentParser(
        prog="mlxperf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    synth.add_parser(sub)
    show = sub.add_parser(
        "machine",
        help="a first look at this machine: its fingerprint (what baselines are keyed on), "
        "each backend's versions and build, and a smoke test of each; exit 1 if one fails",
        description="Print this machine's fingerprint and baseline id, then for each installed "
        "backend its versions, the build its library reports (llama.cpp: CPU features, where "
        "the weights went) and a smoke test: one tiny measurement of synth:tiny in a worker "
        "process, which reports a crash with what is known of it. Run it first on a new CI "
        "runner. Exit 1 when an installed backend fails its smoke test.",
    )
    show.add_argument("--name", help="the --mlxperf-machine override to apply")
    show.add_argument(
        "--backend",
        action="append",
        choices=("mlx", "llamacpp"),
        help="only this backend (repeatable; default: all)",
    )
    show.add_argument("--no-smoke", action="store_true", help="do not run the smoke tests")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=_machine)
    _add_results_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from pytest_mlxperf.store.results import InputError

    argv = list(sys.argv[1:] if argv is None else argv)
    # everything after "--" goes to pytest (ab, bisect), whatever argparse would make of it
    rest = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = build_parser().parse_args(argv[: len(argv) - len(rest) - 1] if rest else argv)
    if hasattr(args, "pytest_args"):
        args.pytest_args = [*args.pytest_args, *rest]
    elif rest:
        build_parser().error(f"mlxperf {args.command} takes no pytest arguments after --")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return int(func(args))
    except (InputError, OSError) as exc:  # both name the file or choice that is wrong
        print(f"mlxperf {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
