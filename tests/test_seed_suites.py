"""The seed benchmark suites in tests/perf are opt-in: skipped, with the way to select them,
unless ``-m seed`` (or MLXPERF_SEED=1) asks for them; never run by the example suite's command."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import REPO

SEED_FILES = ["tests/perf/test_seed_perf.py", "tests/perf/test_seed_lora_perf.py"]


def _pytest(*args: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "MLXPERF_SEED"} | env
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=environ,
    )
    return out.stdout + out.stderr


def test_seed_suites_are_skipped_unless_selected() -> None:
    text = _pytest("--mlxperf", "-rs", *SEED_FILES)
    assert "8 skipped" in text and "passed" not in text, text
    assert "seed benchmark: select it with -m seed (or MLXPERF_SEED=1)" in text


def test_seed_suites_are_selected_by_the_marker_or_the_variable() -> None:
    for args, env in (((("-m", "seed")), {}), ((), {"MLXPERF_SEED": "1"})):
        text = _pytest("--mlxperf", "--collect-only", "-q", *args, "tests/perf", **env)
        assert text.count("::test_seed_") == 8, text


def test_the_example_suite_command_does_not_collect_them() -> None:
    text = _pytest("--mlxperf", "--collect-only", "-q", "tests/perf/test_example_perf.py")
    assert "test_seed" not in text and "4 tests collected" in text, text
