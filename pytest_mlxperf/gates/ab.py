"""``mlxperf ab``: an interleaved A/B gate across Python environments.

The question an upgrade gate answers is "does environment B (say mlx 0.32) run this suite
slower than environment A (mlx 0.30) on this machine?". On a shared machine one process per
environment cannot answer it: separate processes of the *same* code differ by more than many
real regressions. So the suite runs in rounds, a fresh process per environment per round, the
environments' order alternating between rounds (AB, BA, AB, ... or shuffled), and every
process's results file is kept. After each round the sides are compared with the process as
the unit (``process_stats``: per-process medians, paired by round), and rounds are added until
every gated metric is decided (regression, improvement, or shown to be within tolerance) or the
budget of rounds or minutes is spent; what is still undecided is then *inconclusive*, with the
smallest change the data could have resolved.

Each process is ``PYTHON -m pytest --mlxperf ...`` with an empty baselines folder of its own
(every result is "new": the gate is this comparison, not the baselines) and no confirmation
re-runs (the rounds are the repetition). Nothing here imports pytest.
"""

from __future__ import annotations

import os
import random
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pytest_mlxperf.gates.comparison import Comparison, ResultsGroup, compare_groups
from pytest_mlxperf.store.results import InputError, ResultsFile, load_results, write_json

ORDERS = ("alternate", "random")
OUTPUT_TAIL = 25  # lines of a failed process's output shown in the error


class ABError(InputError):
    """A process of the A/B run failed, or the run was set up wrongly; the message says which
    environment, which round, and what it printed."""


@dataclass(frozen=True)
class Environment:
    """One side: a name, the Python interpreter whose packages are measured, and extra
    environment variables for its processes."""

    name: str
    python: Path
    variables: Mapping[str, str] = field(default_factory=dict)

    def check(self) -> None:
        if not self.python.is_file() or not os.access(self.python, os.X_OK):
            raise ABError(f"environment {self.name}: {self.python} is not an executable Python")


def tox_environment(name: str, work_dir: Path = Path(".tox")) -> Environment:
    """The interpreter of tox environment ``name`` (tox 4 layout), with an error that says how
    to create it when it is missing."""
    for python in (work_dir / name / "bin" / "python", work_dir / name / "Scripts" / "python.exe"):
        if python.is_file():
            return Environment(name, python)
    raise ABError(
        f"tox environment {name!r} has no interpreter under {work_dir / name}; create it first "
        f"with: tox -e {name} --notest"
    )


def round_order(count: int, round_index: int, order: str, rng: random.Random) -> list[int]:
    """The environments' order in one round: ``alternate`` rotates by one each round (AB, BA,
    ... for two: every environment runs first equally often), ``random`` shuffles."""
    if order == "random":
        indices = list(range(count))
        rng.shuffle(indices)
        return indices
    shift = round_index % count
    return [(i + shift) % count for i in range(count)]


@dataclass
class ABRun:
    """An A/B run's settings; ``run`` carries it out."""

    environments: Sequence[Environment]
    pytest_args: Sequence[str]
    out_dir: Path
    min_rounds: int = 3
    max_rounds: int = 10
    budget_s: float = 600.0
    order: str = "alternate"
    seed: int = 0
    tolerances: Mapping[str, float] = field(default_factory=dict)
    alpha: float = 0.01
    process_timeout_s: float = 1800.0
    say: Callable[[str], None] = print
    # the metrics whose verdict ends the rounds (all gated ones when empty)
    deciding: Sequence[str] = ()
    _read: dict[Path, ResultsFile] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.environments) < 2:
            raise ABError("an A/B run needs at least two environments (--env or --tox)")
        names = [e.name for e in self.environments]
        if len(set(names)) != len(names):
            raise ABError(f"environment names must differ: {', '.join(names)}")
        if not 2 <= self.min_rounds <= self.max_rounds:
            raise ABError(
                f"rounds: need 2 <= --min-rounds ({self.min_rounds}) <= --max-rounds "
                f"({self.max_rounds}): the process-level test needs two processes per side"
            )
        if self.order not in ORDERS:
            raise ABError(f"--order {self.order!r}: use one of {', '.join(ORDERS)}")
        for env in self.environments:
            env.check()
        if self.out_dir.exists() and any(self.out_dir.glob("*.json")):
            raise ABError(
                f"results folder {self.out_dir} already holds results files; give another "
                "--out or move them away (nothing is overwritten)"
            )

    def results_path(self, env: Environment, round_index: int) -> Path:
        return self.out_dir / f"{env.name}.r{round_index + 1:02d}.json"

    def command(self, env: Environment, round_index: int) -> list[str]:
        """One process of the suite in one environment: fresh baselines, no confirmation."""
        return [
            str(env.python),
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "--mlxperf",
            "--mlxperf-confirm",
            "0",
            "--mlxperf-baselines-dir",
            str((self.out_dir / "baselines" / env.name).resolve()),
            "--mlxperf-json",
            str(self.results_path(env, round_index).resolve()),
            *self.pytest_args,
        ]

    def _process(self, env: Environment, round_index: int) -> float:
        """Run one process; its wall time in seconds. ``ABError`` with its output's tail if it
        fails, times out, or writes no results."""
        started = time.monotonic()
        try:
            done = subprocess.run(
                self.command(env, round_index),
                env={**os.environ, **env.variables},
                capture_output=True,
                text=True,
                timeout=self.process_timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ABError(
                f"round {round_index + 1}, environment {env.name}: the suite did not finish "
                f"within {self.process_timeout_s:g} s (--process-timeout); it was stopped"
            ) from None
        output = (done.stdout + done.stderr).strip().splitlines()
        tail = "\n".join(output[-OUTPUT_TAIL:])
        if done.returncode != 0:
            raise ABError(
                f"round {round_index + 1}, environment {env.name}: pytest exited "
                f"{done.returncode} ({env.python}); results so far are in {self.out_dir}:\n{tail}"
            )
        if not self.results_path(env, round_index).is_file():
            raise ABError(
                f"round {round_index + 1}, environment {env.name}: no results were written "
                f"(did the selection contain perf tests?):\n{tail}"
            )
        return time.monotonic() - started

    def _results(self, env: Environment, round_index: int) -> ResultsFile:
        """A finished process's results file, read once for the whole run."""
        path = self.results_path(env, round_index)
        if path not in self._read:
            self._read[path] = load_results(path)
        return self._read[path]

    def groups(self, rounds: int) -> list[ResultsGroup]:
        return [
            ResultsGroup(env.name, tuple(self._results(env, r) for r in range(rounds)))
            for env in self.environments
        ]

    def run(self) -> ABResult:
        """Rounds until every gated metric is decided or the budget is spent."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        rng = random.Random(self.seed)
        started = time.monotonic()
        durations: list[float] = []
        order_log: list[list[str]] = []
        comparison: Comparison | None = None
        stop = ""
        for r in range(self.max_rounds):
            order = round_order(len(self.environments), r, self.order, rng)
            order_log.append([self.environments[i].name for i in order])
            round_start = time.monotonic()
            for i in order:
                env = self.environments[i]
                self.say(f"round {r + 1}/{self.max_rounds}: running {env.name} ({env.python})")
                seconds = self._process(env, r)
                self.say(f"round {r + 1}/{self.max_rounds}: {env.name} done in {seconds:.1f} s")
            durations.append(time.monotonic() - round_start)
            rounds = r + 1
            if rounds < self.min_rounds:
                continue
            comparison = compare_groups(
                self.groups(rounds), 0, self.tolerances, self.alpha, final=False
            )
            undecided = sum(
                1
                for row, _ in comparison.undecided
                if not self.deciding or row.metric.name in self.deciding
            )
            elapsed = time.monotonic() - started
            if not undecided:
                stop = f"every gated metric decided after {rounds} rounds"
                break
            self.say(f"after round {rounds}: {undecided} metric(s) undecided")
            if rounds == self.max_rounds:
                stop = f"--max-rounds {self.max_rounds} reached with {undecided} undecided"
            elif elapsed + max(durations) > self.budget_s:
                stop = (
                    f"budget of {self.budget_s / 60:g} min would be exceeded by another round "
                    f"({elapsed / 60:.1f} min spent) with {undecided} undecided"
                )
                break
        rounds = len(durations)
        comparison = compare_groups(self.groups(rounds), 0, self.tolerances, self.alpha)
        result = ABResult(comparison, rounds, stop, time.monotonic() - started, order_log)
        write_json(self.out_dir / "ab.json", result.manifest(self))
        return result


@dataclass(frozen=True)
class ABResult:
    """The final comparison and how the run went."""

    comparison: Comparison
    rounds: int
    stopped: str
    seconds: float
    orders: list[list[str]]

    def summary(self) -> str:
        orders = " ".join("/".join(names) for names in self.orders)
        return (
            f"{self.rounds} round(s) in {self.seconds / 60:.1f} min ({orders}); "
            f"stopped: {self.stopped}"
        )

    def manifest(self, run: ABRun) -> dict[str, object]:
        """What ``ab.json`` records: the plan, each round's order and files, and the verdicts."""
        return {
            "environments": [
                {"name": e.name, "python": str(e.python), "variables": dict(e.variables)}
                for e in run.environments
            ],
            "pytest_args": list(run.pytest_args),
            "rounds": self.rounds,
            "orders": self.orders,
            "stopped": self.stopped,
            "seconds": self.seconds,
            "files": {
                e.name: [str(run.results_path(e, r)) for r in range(self.rounds)]
                for e in run.environments
            },
            "verdicts": [
                {
                    "test": row.test,
                    "key": row.key,
                    "metric": row.metric.name,
                    "environment": cell.file.name,
                    "verdict": cell.status,
                    "comparison": cell.comparison.to_json() if cell.comparison else None,
                }
                for row in self.comparison.rows
                for cell in row.cells
            ],
        }
