"""``mlxperf bisect``: find the release of a package that changed a perf suite's numbers.

Given a package and a good and a bad version (``mlx-lm 0.26.4 0.32.2``), the releases in
between are listed from the configured package index (``pip index versions``), an environment
is built per candidate (the candidate, the pins that travel with every candidate, and this
pytest-mlxperf; cached and reused), and each candidate is judged against the good version with
the interleaved A/B gate (``ab``). A binary search over the releases finds the first one whose
verdict differs from the good version's: about log2(n) environments, not n.

It follows the direction of the change, not a judgement of it: the metrics that differ at the
bad end (a regression or an improvement; or the one ``--metric`` names) are followed, and a
candidate "differs" when one of them moves the same way there. Like ``git bisect`` it is
robust: a release that fails to install or import is skipped with a note and a neighbour is
tried; a candidate the gate cannot decide stops the search, which then says between which
versions it cannot decide; every verdict is written to a state file, so an interrupted bisect
resumes where it stopped; the environment cache is bounded and ``--clean`` empties it.

Nothing here imports pytest.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pytest_mlxperf.gates.ab import ABError, ABRun, Environment
from pytest_mlxperf.gates.comparison import Comparison, compare_groups
from pytest_mlxperf.stats.verdicts import Verdict
from pytest_mlxperf.store.files import atomic_write
from pytest_mlxperf.store.results import InputError

SAME, DIFFERS, SKIPPED, UNDECIDED = "same", "differs", "skipped", "undecided"
ENV_LIMIT = 12  # environments kept in the cache; the least recently used go first
INSTALL_TIMEOUT_S = 1800.0


class BisectError(InputError):
    """The bisect cannot go on as asked; the message says why and what to do."""


def parse_index_versions(output: str) -> list[str]:
    """The versions ``pip index versions PACKAGE`` printed (``Available versions: a, b``)."""
    match = re.search(r"Available versions:\s*(.+)", output)
    if match is None:
        raise BisectError(f"could not read the package index's versions from: {output.strip()!r}")
    return [v.strip() for v in match.group(1).split(",") if v.strip()]


def index_versions(package: str, python: str = sys.executable) -> list[str]:
    """Every released version of ``package`` on the configured package index."""
    done = subprocess.run(
        [python, "-m", "pip", "index", "versions", package],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise BisectError(
            f"pip index versions {package} failed: {(done.stderr or done.stdout).strip()}"
        )
    return parse_index_versions(done.stdout)


def releases_between(versions: Sequence[str], good: str, bad: str) -> list[str]:
    """The releases from ``good`` to ``bad`` inclusive, in that direction (either may be the
    newer), ordered by ``packaging``'s version order; pre-releases only if an end is one."""
    from packaging.version import InvalidVersion, Version

    try:
        lo, hi = sorted((Version(good), Version(bad)))
    except InvalidVersion as exc:
        raise BisectError(f"not a version: {exc}") from None
    keep_pre = lo.is_prerelease or hi.is_prerelease
    chosen = []
    for text in versions:
        try:
            v = Version(text)
        except InvalidVersion:
            continue
        if lo <= v <= hi and (keep_pre or not v.is_prerelease):
            chosen.append(v)
    chosen = sorted(set(chosen))
    for end in (good, bad):
        if Version(end) not in chosen:
            raise BisectError(f"version {end} is not on the package index")
    ordered = [str(v) for v in chosen]
    return ordered if Version(good) < Version(bad) else ordered[::-1]


@dataclass
class EnvironmentCache:
    """Virtual environments, one per (package version, pins, project), under ``root``;
    ``uv`` creates them when it is installed, ``venv`` + pip otherwise."""

    root: Path
    project: Path
    extras: str = "synth"
    limit: int = ENV_LIMIT

    def _key(self, requirements: Sequence[str]) -> str:
        text = json.dumps([*requirements, str(self.project.resolve()), self.extras])
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def python(self, name: str, requirements: Sequence[str]) -> Path:
        """The interpreter of an environment with ``requirements`` installed (built if it is
        not cached). ``BisectError`` with the installer's output if it cannot be built."""
        folder = self.root / f"{name}-{self._key(requirements)}"
        python = folder / "bin" / "python"
        ready = folder / "mlxperf-env.json"
        if ready.is_file():
            ready.touch()  # most recently used
            return python
        shutil.rmtree(folder, ignore_errors=True)  # a half-built one from an interrupted run
        self.root.mkdir(parents=True, exist_ok=True)
        self.make_room()
        project = f"{self.project.resolve()}[{self.extras}]" if self.extras else str(self.project)
        uv = shutil.which("uv")
        if uv:
            steps = [
                [uv, "venv", "--quiet", "--python", sys.executable, str(folder)],
                [
                    uv,
                    "pip",
                    "install",
                    "--quiet",
                    "--python",
                    str(python),
                    "-e",
                    project,
                    *requirements,
                ],
            ]
        else:
            steps = [
                [sys.executable, "-m", "venv", str(folder)],
                [str(python), "-m", "pip", "install", "--quiet", "-e", project, *requirements],
            ]
        for step in steps:
            done = subprocess.run(
                step, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False
            )
            if done.returncode != 0:
                shutil.rmtree(folder, ignore_errors=True)
                tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
                raise BisectError(f"installing {' '.join(requirements)} failed:\n{tail}")
        atomic_write(ready, json.dumps({"requirements": list(requirements)}, indent=2) + "\n")
        return python

    def make_room(self) -> None:
        """Remove the least recently used environments so that one more fits the limit."""
        built = sorted(
            (p for p in self.root.glob("*/mlxperf-env.json")), key=lambda p: p.stat().st_mtime
        )
        for marker in built[: max(0, len(built) - self.limit + 1)]:
            shutil.rmtree(marker.parent, ignore_errors=True)

    def clean(self) -> int:
        """Remove every cached environment; how many there were."""
        count = len(list(self.root.glob("*/mlxperf-env.json"))) if self.root.is_dir() else 0
        shutil.rmtree(self.root, ignore_errors=True)
        return count


@dataclass
class Tested:
    """One version's outcome: ``same`` / ``differs`` / ``skipped`` / ``undecided``."""

    __test__ = False  # a name pytest would otherwise try to collect

    version: str
    outcome: str
    note: str = ""
    changes: dict[str, str] = field(default_factory=dict)  # followed metric -> change text


# judge(version) -> (outcome, note, changes): the A/B gate of that version against the good one
Judge = Callable[[str], Tested]


def bisect_versions(
    releases: Sequence[str], judge: Judge, say: Callable[[str], None] = print
) -> tuple[str | None, str | None, list[Tested]]:
    """Binary search over ``releases`` (good first, bad last) for the first version that
    differs from the good one. Returns (last same, first different, every test) — with
    ``first different`` ``None`` when the search could not decide (the last element of the list
    says why)."""
    tested: list[Tested] = []

    def run(index: int) -> Tested:
        result = judge(releases[index])
        tested.append(result)
        say(f"{releases[index]}: {result.outcome}" + (f" ({result.note})" if result.note else ""))
        return result

    end = run(len(releases) - 1)
    if end.outcome != DIFFERS:
        return None, None, tested
    lo, hi = 0, len(releases) - 1  # releases[lo] is the same as good, releases[hi] differs
    while hi - lo > 1:
        mid = (lo + hi) // 2
        # a release that cannot be installed: try its neighbours, nearest first, inside (lo, hi)
        candidates = sorted(range(lo + 1, hi), key=lambda i: (abs(i - mid), i))
        outcome = None
        for index in candidates:
            result = run(index)
            if result.outcome == SKIPPED:
                continue
            outcome = result.outcome
            mid = index
            break
        if outcome is None:
            tested.append(
                Tested(
                    releases[hi],
                    UNDECIDED,
                    f"every release between {releases[lo]} and {releases[hi]} failed to install",
                )
            )
            return releases[lo], None, tested
        if outcome == UNDECIDED:
            tested.append(
                Tested(
                    releases[mid],
                    UNDECIDED,
                    f"cannot decide between "
                    f"{releases[lo]} and {releases[hi]}: {releases[mid]} is "
                    "inconclusive; add rounds (--max-rounds) or quiet the machine",
                )
            )
            return releases[lo], None, tested
        if outcome == SAME:
            lo = mid
        else:
            hi = mid
    return releases[lo], releases[hi], tested


@dataclass
class BisectRun:
    """A bisect's settings and state; ``run`` carries it out."""

    package: str
    good: str
    bad: str
    pins: Sequence[str]
    pytest_args: Sequence[str]
    out_dir: Path
    cache: EnvironmentCache
    metric: str | None = None
    pins_if: Sequence[tuple[str, str]] = ()  # (version specifier, requirement)
    tolerances: dict[str, float] = field(default_factory=dict)
    alpha: float = 0.01
    min_rounds: int = 3
    max_rounds: int = 8
    budget_s: float = 600.0
    versions: Sequence[str] | None = None  # from the index when None
    say: Callable[[str], None] = print
    followed: dict[str, str] = field(default_factory=dict)  # "test key metric" -> verdict at bad
    comparisons: dict[str, Comparison] = field(default_factory=dict)

    @property
    def plan(self) -> list[Any]:
        """What must be equal for a state file to be resumed."""
        pins_if = [list(p) for p in self.pins_if]
        return [self.package, self.good, self.bad, list(self.pins), pins_if, list(self.pytest_args)]

    @property
    def project_name(self) -> str:
        """The package's name on the index: ``mlx[cpu]`` is searched as ``mlx`` and installed
        with its extra."""
        from packaging.requirements import InvalidRequirement, Requirement

        try:
            return Requirement(self.package).name
        except InvalidRequirement:
            raise BisectError(f"not a package name: {self.package!r}") from None

    @property
    def state_path(self) -> Path:
        return self.out_dir / "bisect.json"

    def _state(self) -> dict[str, Any]:
        if not self.state_path.is_file():
            return {}
        state = json.loads(self.state_path.read_text(encoding="utf-8"))
        if state.get("plan") != self.plan:
            raise BisectError(
                f"{self.state_path} belongs to another bisect ({state.get('plan')}); give "
                "another --out to start a new one"
            )
        return state

    def _save(self, tested: dict[str, Tested], extra: dict[str, Any]) -> None:
        document = {
            "plan": self.plan,
            "followed": self.followed,
            "tested": {v: asdict(t) for v, t in tested.items()},
            **extra,
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.state_path, json.dumps(document, indent=2) + "\n")

    def requirements(self, version: str) -> list[str]:
        """What a candidate's environment installs: the candidate, the pins, and the pins
        whose version specifier the candidate matches (``--pin-if '<0.30' 'transformers<5'``)."""
        from packaging.specifiers import SpecifierSet

        extra = [req for spec, req in self.pins_if if version in SpecifierSet(spec)]
        return [f"{self.package}=={version}", *self.pins, *extra]

    def environment(self, version: str) -> Environment:
        requirements = self.requirements(version)
        return Environment(
            version, self.cache.python(f"{self.project_name}-{version}", requirements)
        )

    def _gate(self, version: str, good_env: Environment) -> Comparison:
        folder = self.out_dir / f"{good_env.name}-vs-{version}"
        if folder.exists():
            shutil.rmtree(folder)  # an interrupted gate: its verdict was never recorded
        run = ABRun(
            [good_env, self.environment(version)],
            self.pytest_args,
            folder,
            min_rounds=self.min_rounds,
            max_rounds=self.max_rounds,
            budget_s=self.budget_s,
            tolerances=self.tolerances,
            alpha=self.alpha,
            say=lambda line: self.say(f"  {version}: {line}"),
            deciding=[self.metric] if self.metric else [],
        )
        return run.run().comparison

    def _outcome(self, version: str, comparison: Comparison) -> Tested:
        moved = {
            f"{row.test} {row.key} {row.metric.name}": (cell.status, cell)
            for row in comparison.rows
            for cell in row.cells
        }
        if not self.followed:  # the bad end: what differs there is what is followed
            self.followed = {
                name: status
                for name, (status, _) in moved.items()
                if status in (Verdict.REGRESSION.value, Verdict.IMPROVEMENT.value)
                and (self.metric is None or name.endswith(f" {self.metric}"))
            }
        changes = {
            name: f"{moved[name][1].comparison.change:+.1%}"
            for name in self.followed
            if name in moved and moved[name][1].comparison is not None
        }
        statuses = [moved[name][0] if name in moved else "missing" for name in self.followed]
        if not self.followed:
            return Tested(version, SAME, "no gated metric differs from the good version", changes)
        if any(s == want for s, want in zip(statuses, self.followed.values(), strict=True)):
            return Tested(version, DIFFERS, "", changes)
        if all(s == Verdict.PASS.value for s in statuses):
            return Tested(version, SAME, "", changes)
        return Tested(version, UNDECIDED, "the gate stayed inconclusive", changes)

    def run(self) -> BisectResult:
        started = time.monotonic()
        state = self._state()
        self.followed = state.get("followed", {})
        done = {v: Tested(**t) for v, t in state.get("tested", {}).items()}
        releases = releases_between(
            self.versions if self.versions is not None else index_versions(self.project_name),
            self.good,
            self.bad,
        )
        self.say(f"{len(releases)} releases from {self.good} to {self.bad}: {', '.join(releases)}")
        try:
            good_env = self.environment(self.good)
        except BisectError as exc:
            raise BisectError(f"the good version {self.good} cannot be installed: {exc}") from None
        built = 0

        def judge(version: str) -> Tested:
            nonlocal built
            if version in done:
                self.say(f"{version}: from {self.state_path}")
                return done[version]
            try:
                built += 1
                comparison = self._gate(version, good_env)
            except (BisectError, ABError) as exc:
                if version == self.bad:  # no neighbour can stand in for an end of the range
                    raise BisectError(
                        f"the gate of {self.package} {self.bad} against {self.good} could not "
                        f"run, so nothing was bisected: {exc}"
                    ) from None
                result = Tested(version, SKIPPED, str(exc).splitlines()[0])
            else:
                self.comparisons[version] = comparison
                result = self._outcome(version, comparison)
            done[version] = result
            self._save(done, {})
            return result

        last_same, first_differs, tested = bisect_versions(releases, judge, self.say)
        result = BisectResult(
            self.package,
            self.good,
            self.bad,
            releases,
            last_same,
            first_differs,
            tested,
            dict(self.followed),
            built,
            time.monotonic() - started,
        )
        self._save(done, {"result": result.summary()})
        return result


@dataclass(frozen=True)
class BisectResult:
    """Where the change is, and every version tested."""

    package: str
    good: str
    bad: str
    releases: list[str]
    last_same: str | None
    first_differs: str | None
    tested: list[Tested]
    followed: dict[str, str]
    environments_built: int
    seconds: float

    def summary(self) -> str:
        if self.last_same is None and self.first_differs is None:
            if self.tested and self.tested[0].outcome == UNDECIDED:
                return (
                    f"{self.package} {self.bad} against {self.good}: the gate stayed "
                    "inconclusive, so nothing was bisected (add rounds or budget, or quiet the "
                    "machine)"
                )
            return f"{self.package} {self.bad} does not differ from {self.good}: nothing to bisect"
        if self.first_differs is None:
            return self.tested[-1].note
        return (
            f"{self.package} {self.first_differs} is the first release that differs from "
            f"{self.good} (the last one that does not: {self.last_same})"
        )

    def in_order(self) -> list[Tested]:
        """The tested versions in release order (``render.bisect`` shows them so)."""
        by_version = {t.version: t for t in self.tested}
        return [by_version[v] for v in self.releases if v in by_version]


def all_groups_comparison(run: BisectRun) -> Comparison | None:
    """Every tested version's processes side by side against the good version's (from the
    first gate that has them), for one HTML report across versions."""
    from pytest_mlxperf.gates.comparison import ResultsGroup
    from pytest_mlxperf.store.results import load_results

    groups = []
    good_files: list[Path] = []
    for version in run.comparisons:
        folder = run.out_dir / f"{run.good}-vs-{version}"
        if not good_files:
            good_files = sorted(folder.glob(f"{run.good}.r*.json"))
        files = sorted(folder.glob(f"{version}.r*.json"))
        if files:
            groups.append(ResultsGroup(version, tuple(load_results(f) for f in files)))
    if not good_files or not groups:
        return None
    reference = ResultsGroup(run.good, tuple(load_results(f) for f in good_files))
    return compare_groups([reference, *groups], 0, run.tolerances, run.alpha)


def default_env_root() -> Path:
    """Where bisect environments are cached: ``envs`` under the model cache."""
    from pytest_mlxperf.synth import default_cache_dir

    return default_cache_dir() / "envs"
