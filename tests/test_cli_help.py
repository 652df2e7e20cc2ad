"""The ``mlxperf`` command's help says which test ``--alpha`` is the level of: ``ab`` and
``bisect`` judge with the process as the unit (a t-test on per-process medians,
``process_stats``), not with the plugin's Mann-Whitney test on samples."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pytest_mlxperf.settings.options import OPTIONS_BY_NAME


def alpha_help(command: str) -> str:
    """The help text of ``mlxperf COMMAND --alpha``, on one line."""
    run = subprocess.run(
        [sys.executable, "-m", "pytest_mlxperf.cli", command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    text = " ".join(run.stdout.split())
    return text[text.index("--alpha P ") : text.index("(default 0.01)")]


@pytest.mark.parametrize("command", ["ab", "bisect"])
def test_ab_and_bisect_name_the_t_test_on_process_medians(command: str) -> None:
    text = alpha_help(command)
    assert "significance level of a t-test of the log ratio of per-process medians" in text
    assert "paired by round" in text
    # the plugin's own --mlxperf-alpha help, true of a single process's samples only
    assert OPTIONS_BY_NAME["alpha"].help not in text
    assert "Mann-Whitney" not in text.split(";")[0]  # named only for memory growth
    assert "memory growth (a difference near zero) by the one-sided Mann-Whitney" in text


def test_compare_names_both_tests() -> None:
    text = alpha_help("compare")
    assert text.startswith("--alpha P significance level of the one-sided Mann-Whitney U test")
    assert "with --pool and 2 or more files on both sides, of a t-test" in text
