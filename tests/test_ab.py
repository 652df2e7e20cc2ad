"""The interleaved A/B gate: ``mlxperf ab`` run for real (fresh pytest processes per
environment and round) on a suite whose callable is really slower in one environment, and
``mlxperf compare --pool`` on several processes per version."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_mlxperf.gates.ab import ABError, ABRun, Environment, round_order, tox_environment
from tests.test_comparison import MLX, make_document, make_record, write

# A perf suite whose work doubles when SLOW is set: a real slowdown, not edited numbers.
SUITE = """
import os

import pytest


def work(n):
    total = 0
    for i in range(n):
        total += i * i
    return total


@pytest.mark.mlxperf(repetitions=5)
def test_loop(mlxperf):
    n = 150_000 * (2 if os.environ.get("SLOW") else 1)
    mlxperf.time(work, n, name="loop")
"""
PYTHON = sys.executable


def ab(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_suite.py").write_text(SUITE)
    return subprocess.run(
        [sys.executable, "-m", "pytest_mlxperf.cli", "ab", *args, "--", "test_suite.py"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )


def test_round_order_alternates_or_shuffles_reproducibly() -> None:
    rng = random.Random(0)
    assert [round_order(2, r, "alternate", rng) for r in range(4)] == [[0, 1], [1, 0]] * 2
    assert [round_order(3, r, "alternate", rng) for r in range(3)] == [
        [0, 1, 2],
        [1, 2, 0],
        [2, 0, 1],
    ]
    shuffled = [round_order(3, r, "random", random.Random(5)) for r in range(2)]
    assert shuffled == [round_order(3, r, "random", random.Random(5)) for r in range(2)]
    assert all(sorted(order) == [0, 1, 2] for order in shuffled)


def test_a_real_slowdown_is_caught_with_the_process_as_the_unit(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = ab(
        tmp_path,
        f"--env=A={PYTHON}",
        f"--env=B={PYTHON}",
        "--set=B:SLOW=1",
        "--min-rounds=2",
        "--max-rounds=4",
        "--tolerance=5%",
        f"--out={out}",
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "regression" in done.stdout and "t-test on process medians (paired by round)" in (
        done.stdout
    )
    assert "round 1/4: A done" in done.stdout and "round 2/4: B done" in done.stdout
    manifest = json.loads((out / "ab.json").read_text())
    rounds = manifest["rounds"]
    assert 2 <= rounds <= 4
    assert manifest["orders"][:2] == [["A", "B"], ["B", "A"]]
    assert [len(manifest["files"][name]) for name in ("A", "B")] == [rounds, rounds]
    (verdict,) = manifest["verdicts"]
    assert verdict["metric"] == "duration" and verdict["verdict"] == "regression"
    assert verdict["comparison"]["n_current"] == rounds
    assert 0.5 < verdict["comparison"]["change"] < 1.5  # twice the work: about +100%
    assert (out / "report.html").read_text().startswith("<!DOCTYPE html>")
    assert "mlxperf upgrade comparison" in (out / "report.md").read_text()


def test_the_same_environment_twice_raises_no_regression(tmp_path: Path) -> None:
    done = ab(
        tmp_path,
        f"--env=A={PYTHON}",
        f"--env=A2={PYTHON}",
        "--min-rounds=2",
        "--max-rounds=3",
        "--tolerance=50%",
        f"--out={tmp_path / 'out'}",
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "regression" not in done.stdout.split("verdicts:")[-1]


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ([f"--env=A={PYTHON}"], "needs at least two environments"),
        ([f"--env=A={PYTHON}", "--env=B=/nonexistent/python"], "not an executable Python"),
        ([f"--env=A={PYTHON}", f"--env=A={PYTHON}"], "names must differ"),
        ([f"--env=A={PYTHON}", f"--env=B={PYTHON}", "--set=C:X=1"], "expected ENV:KEY=VALUE"),
        ([f"--env=A={PYTHON}", f"--env=B={PYTHON}", "--min-rounds=1"], "needs two processes"),
        (["--tox=nope"], "tox -e nope --notest"),
    ],
)
def test_bad_set_ups_are_refused_with_exit_2(tmp_path: Path, args: list[str], problem: str) -> None:
    done = ab(tmp_path, *args, f"--out={tmp_path / 'out'}")
    assert done.returncode == 2 and problem in done.stderr, done.stderr


def test_existing_results_are_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    kept = write(out / "A.r01.json", {"keep": True})
    with pytest.raises(ABError, match="already holds results files"):
        ABRun([Environment("A", Path(PYTHON)), Environment("B", Path(PYTHON))], [], out)
    assert json.loads(kept.read_text()) == {"keep": True}


def test_a_failing_process_stops_the_run_with_its_output(tmp_path: Path) -> None:
    (tmp_path / "test_broken.py").write_text("def test_broken(mlxperf):\n    assert 0, 'boom'\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest_mlxperf.cli",
            "ab",
            f"--env=A={PYTHON}",
            f"--env=B={PYTHON}",
            "--",
            "test_broken.py",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "round 1, environment A: pytest exited 1" in done.stderr and "boom" in done.stderr


def test_tox_environments_resolve_to_their_interpreter(tmp_path: Path) -> None:
    python = tmp_path / ".tox" / "mlx032" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.symlink_to(PYTHON)
    env = tox_environment("mlx032", tmp_path / ".tox")
    assert env.python == python and env.name == "mlx032"


def test_compare_pools_processes_per_version(tmp_path: Path) -> None:
    newer = {**MLX, "mlx": "0.31.0", "mlx-cpu": "0.31.0"}
    paths = []
    for i in range(3):
        old = make_document(make_record(seed=10 + i))
        new = make_document(make_record(seed=20 + i, scale={"prompt_tps": 0.8}, packages=newer))
        paths += [write(tmp_path / f"old{i}.json", old), write(tmp_path / f"new{i}.json", new)]
    done = subprocess.run(
        [sys.executable, "-m", "pytest_mlxperf.cli", "compare", "--pool", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "(3 processes in" in done.stdout
    assert "prompt_tps" in done.stdout and "processes=3/3" in done.stdout
    # without --pool each file is its own side, judged by repetitions
    unpooled = subprocess.run(
        [sys.executable, "-m", "pytest_mlxperf.cli", "compare", *map(str, paths[:2])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "processes=" not in unpooled.stdout and "Mann-Whitney" in unpooled.stdout
