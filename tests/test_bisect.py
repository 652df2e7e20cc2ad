"""``mlxperf bisect``: the releases it searches, the binary search itself (with a judge that
answers from a table, as the A/B gate would), skipped and undecided releases, the state file,
conditional pins and the bounded environment cache."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from packaging.version import Version

from pytest_mlxperf.gates.bisect import (
    DIFFERS,
    SAME,
    SKIPPED,
    UNDECIDED,
    BisectError,
    BisectResult,
    BisectRun,
    EnvironmentCache,
    Tested,
    bisect_versions,
    parse_index_versions,
    releases_between,
)
from pytest_mlxperf.render.bisect import bisect_markdown, bisect_table

PIP_OUTPUT = """mlx-lm (0.32.2)
Available versions: 0.32.2, 0.32.1, 0.32.0, 0.31.3, 0.30.0, 0.29.1, 0.28.4, 0.28.0, 0.27.1, \
0.27.0, 0.26.4, 0.26.3, 0.30.0rc1, 0.10.0, 0.9.0
"""
RELEASES = [f"0.{minor}.0" for minor in range(1, 33)]  # 32 releases


def test_the_index_output_is_read_and_the_range_ordered_from_good_to_bad() -> None:
    versions = parse_index_versions(PIP_OUTPUT)
    assert versions[0] == "0.32.2" and "0.30.0rc1" in versions
    upward = releases_between(versions, "0.26.4", "0.29.1")
    assert upward == ["0.26.4", "0.27.0", "0.27.1", "0.28.0", "0.28.4", "0.29.1"]
    # numeric order, not text order (0.9 < 0.10), pre-releases left out, and a downward bisect
    assert releases_between(versions, "0.10.0", "0.9.0") == ["0.10.0", "0.9.0"]
    assert "0.30.0rc1" not in releases_between(versions, "0.29.1", "0.32.2")
    with pytest.raises(BisectError, match=r"0\.26\.5 is not on the package index"):
        releases_between(versions, "0.26.5", "0.32.2")
    with pytest.raises(BisectError, match="could not read"):
        parse_index_versions("ERROR: No matching distribution found for nope")


def by_threshold(first_bad: str, **special: str) -> tuple[Callable[[str], Tested], list[str]]:
    calls: list[str] = []

    def judge(version: str) -> Tested:
        calls.append(version)
        if version in special:
            return Tested(version, special[version], "from the table")
        return Tested(version, DIFFERS if Version(version) >= Version(first_bad) else SAME)

    return judge, calls


def test_the_search_finds_the_first_release_in_about_log2_n_gates() -> None:
    judge, calls = by_threshold("0.19.0")
    last_same, first_differs, _ = bisect_versions(RELEASES, judge, say=lambda _: None)
    assert (last_same, first_differs) == ("0.18.0", "0.19.0")
    assert len(calls) <= 1 + 5  # the bad end, then log2(31) steps
    assert calls[0] == RELEASES[-1]


def test_no_difference_at_the_bad_end_means_nothing_to_bisect() -> None:
    judge, calls = by_threshold("9.0.0")
    assert bisect_versions(RELEASES, judge, say=lambda _: None)[:2] == (None, None)
    assert calls == [RELEASES[-1]]


def test_a_release_that_cannot_be_installed_is_skipped_for_a_neighbour() -> None:
    judge, calls = by_threshold("0.19.0", **{"0.16.0": SKIPPED})
    last_same, first_differs, tested = bisect_versions(RELEASES, judge, say=lambda _: None)
    assert (last_same, first_differs) == ("0.18.0", "0.19.0")
    assert "0.16.0" in calls and any(t.outcome == SKIPPED for t in tested)


def test_an_undecided_release_stops_the_search_and_says_where() -> None:
    judge, _ = by_threshold("0.19.0", **{"0.24.0": UNDECIDED, "0.16.0": UNDECIDED})
    _, first_differs, tested = bisect_versions(RELEASES, judge, say=lambda _: None)
    assert first_differs is None
    assert "cannot decide between" in tested[-1].note


def run_for(tmp_path: Path, **kw: object) -> BisectRun:
    cache = EnvironmentCache(tmp_path / "envs", tmp_path)
    return BisectRun(
        "mlx-lm",
        "0.26.4",
        "0.32.2",
        ["mlx[cpu]==0.32.4"],
        ["-k", "mlx"],
        tmp_path / "out",
        cache,
        **kw,
    )  # type: ignore[arg-type]


def test_conditional_pins_follow_the_candidate() -> None:
    run = run_for(Path("/nonexistent"), pins_if=[("<0.30", "transformers<5")])
    assert run.requirements("0.29.1") == ["mlx-lm==0.29.1", "mlx[cpu]==0.32.4", "transformers<5"]
    assert run.requirements("0.32.2") == ["mlx-lm==0.32.2", "mlx[cpu]==0.32.4"]


def test_a_state_file_of_another_bisect_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    state = out / "bisect.json"
    state.write_text(json.dumps({"plan": ["mlx", "0.29.4", "0.31.2", [], [], []]}))
    with pytest.raises(BisectError, match="belongs to another bisect"):
        run_for(tmp_path, versions=["0.26.4", "0.32.2"]).run()
    assert json.loads(state.read_text())["plan"][0] == "mlx"  # left as it was


def test_the_environment_cache_is_bounded_and_cleaned(tmp_path: Path) -> None:
    cache = EnvironmentCache(tmp_path / "envs", tmp_path, limit=3)
    for i in range(5):
        marker = cache.root / f"env{i}" / "mlxperf-env.json"
        marker.parent.mkdir(parents=True)
        marker.write_text("{}")
        cache.make_room()  # what python() does before building one more
    assert len(list(cache.root.glob("*/mlxperf-env.json"))) <= 3
    assert cache.clean() <= 3 and not cache.root.exists()


def test_the_command_needs_its_arguments_and_cleans_on_request(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest_mlxperf.cli", "bisect", "--env-dir", str(tmp_path / "envs")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "needs PACKAGE GOOD BAD" in done.stderr
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest_mlxperf.cli",
            "bisect",
            "--clean",
            "--env-dir",
            str(tmp_path / "envs"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "removed 0 environment(s)" in done.stdout


def test_the_result_reads_as_a_table_and_an_upstream_snippet() -> None:
    metric = "tests/perf/t.py::test_a[mlx] mlx:m:pp128+tg64 prompt_tps"
    result = BisectResult(
        "mlx-lm",
        "0.26.4",
        "0.32.2",
        ["0.26.4", "0.27.0", "0.28.2", "0.32.2"],
        "0.26.4",
        "0.27.0",
        [
            Tested("0.32.2", DIFFERS, changes={metric: "+38.9%"}),
            Tested("0.28.2", DIFFERS, changes={metric: "+38.5%"}),
            Tested("0.27.0", DIFFERS, changes={metric: "+39.1%"}),
        ],
        {metric: "improvement"},
        3,
        474.0,
    )
    assert result.summary().startswith("mlx-lm 0.27.0 is the first release that differs")
    table = bisect_table(result).splitlines()
    assert [line.split()[0] for line in table[2:]] == ["0.27.0", "0.28.2", "0.32.2"]
    snippet = bisect_markdown(
        result, "linux-x86_64-abc", "mlxperf bisect mlx-lm 0.26.4 0.32.2", "mlx 1"
    )
    assert "| 0.27.0 | differs | +39.1% |" in snippet
    assert "`linux-x86_64-abc`" in snippet and "Held fixed in every environment: mlx 1" in snippet
    assert snippet.rstrip().endswith("`mlxperf bisect mlx-lm 0.26.4 0.32.2`")


def test_a_gate_that_cannot_run_at_the_bad_end_is_an_error_with_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not "does not differ: nothing to bisect": the suite failing in an environment (here an
    mlx-lm whose server dies under the pinned mlx) says so, with the process's own output."""
    from pytest_mlxperf.gates.ab import ABError

    run = run_for(tmp_path, versions=["0.26.4", "0.30.7", "0.32.2"])
    monkeypatch.setattr(run, "environment", lambda version: version)

    def gate(version: str, good_env: object) -> object:
        raise ABError(
            "round 1, environment 0.26.4: pytest exited 1 (python); results so far are in x:\n"
            "FAILED test_one_user[mlx] - the stream ended after 0 tokens"
        )

    monkeypatch.setattr(run, "_gate", gate)
    with pytest.raises(BisectError) as caught:
        run.run()
    message = str(caught.value)
    assert message.startswith("the gate of mlx-lm 0.32.2 against 0.26.4 could not run")
    assert "FAILED test_one_user[mlx] - the stream ended after 0 tokens" in message


@pytest.mark.parametrize(
    ("end", "says"),
    [
        (SAME, "mlx-lm 0.32.2 does not differ from 0.26.4: nothing to bisect"),
        (UNDECIDED, "mlx-lm 0.32.2 against 0.26.4: the gate stayed inconclusive, so nothing"),
    ],
)
def test_an_end_that_is_not_different_says_which_way(end: str, says: str) -> None:
    """An inconclusive gate at the bad end is not "does not differ"."""
    result = BisectResult(
        "mlx-lm", "0.26.4", "0.32.2", ["0.26.4", "0.32.2"], None, None,
        [Tested("0.32.2", end)], {}, 1, 60.0,
    )  # fmt: skip
    assert result.summary().startswith(says)
