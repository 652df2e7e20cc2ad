"""Fault injection with real processes and real files: crashed, hung and oversized workers,
writers killed mid-write, bad baseline files, baselines from another machine. Each fault fails
only the affected test, with a clear reason, and loses no baseline."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import signal
import time
from pathlib import Path

import pytest

from pytest_mlxperf.store.baseline import BaselineStore, read_file
from tests.conftest import TINY_PERF_TEST

pytestmark = pytest.mark.usefixtures("synth_cache")

# A suite where the first test's worker gets a signal mid-measurement. The second test uses the
# same model: it must get a fresh worker and pass; the third must be untouched.
SIGNALLED = """
import os, signal, threading

def test_victim(mlxperf):
    model = mlxperf.load("llamacpp", "synth:tiny")
    threading.Timer(1.5, os.kill, (model.pid, signal.{sig})).start()
    mlxperf.measure(model, prompt_tokens=64, generation_tokens=3000)

def test_next_uses_a_fresh_worker(mlxperf):
    model = mlxperf.load("llamacpp", "synth:tiny")
    mlxperf.measure(model, prompt_tokens=16, generation_tokens=8)

def test_unrelated():
    pass
"""


def saved_suite(pytester: pytest.Pytester, source: str, *args: str) -> Path:
    """Write ``source``, run it once with --mlxperf-save-baselines, return its baseline file."""
    pytester.makepyfile(test_suite=source)
    result = pytester.runpytest_subprocess("--mlxperf", "--mlxperf-save-baselines", *args)
    result.assert_outcomes(passed=result.parseoutcomes().get("passed", 0))
    return pytester.path / "baselines" / "test_suite.json"


@pytest.mark.parametrize(("sig", "reason"), [("SIGSEGV", "SIGSEGV"), ("SIGKILL", "SIGKILL")])
def test_worker_killed_mid_measurement(pytester: pytest.Pytester, sig: str, reason: str) -> None:
    pytester.makepyfile(test_suite=SIGNALLED.format(sig=sig))
    result = pytester.runpytest_subprocess("--mlxperf", "--mlxperf-save-baselines")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [f"*worker for llamacpp model 'synth:tiny' was killed by {reason}*"]
    )
    entries = read_file(pytester.path / "baselines" / "test_suite.json")
    assert [e["test"] for e in entries.values()] == ["test_suite.py::test_next_uses_a_fresh_worker"]


def test_hung_worker_is_stopped_after_the_timeout(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SIGNALLED.format(sig="SIGSTOP"))
    start = time.monotonic()
    result = pytester.runpytest_subprocess("--mlxperf", "--mlxperf-timeout", "4")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        ["*did not finish run within 4 s (--mlxperf-timeout); it was stopped*"]
    )
    assert time.monotonic() - start < 120


def test_worker_over_its_memory_limit(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_suite="""
        def test_big(mlxperf):
            mlxperf.load("llamacpp", "synth:tiny")

        def test_unrelated():
            pass
        """
    )
    result = pytester.runpytest_subprocess("--mlxperf", "--mlxperf-memory-limit", "20MB")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*exceeded the memory limit of 0.020 GB (--mlxperf-memory-limit)*resident*GB*"]
    )


def _rewrite_forever(root: str) -> None:
    store = BaselineStore(Path(root))
    i = 0
    while True:
        i += 1
        store.save(
            "tests/test_x.py::test_y",
            f"k{i % 50}",
            "box",
            {
                "machine": {"name": "box"},
                "test": "tests/test_x.py::test_y",
                "name": f"k{i % 50}",
                "backend": "mlx",
                "model": {"name": "m"},
                "workload": {"n": i},
                "runs": [{"samples": {"generation_tps": [float(i)] * 2000}, "provenance": {}}],
            },
        )


def test_writer_killed_mid_write_leaves_a_loadable_file(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    path = BaselineStore(tmp_path).path_for("tests/test_x.py::test_y")
    sizes = []
    for delay in (0.8, 1.1, 1.3, 1.7, 2.3):
        proc = ctx.Process(target=_rewrite_forever, args=(str(tmp_path),))
        proc.start()
        time.sleep(delay)
        proc.kill()
        proc.join()
        assert proc.exitcode == -signal.SIGKILL
        entries = read_file(path)  # never half a file
        assert entries
        sizes.append(len(entries))
    assert sizes == sorted(sizes)  # entries accumulate; none is ever lost


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"schema": 1, "entries": {', "*invalid JSON at line 1, column 27*"),
        ('{"schema": 0, "entries": {}}', "*schema version 0, but this pytest-mlxperf reads*"),
    ],
)
def test_bad_baseline_file_errors_the_test_and_is_left_untouched(
    pytester: pytest.Pytester, content: str, message: str
) -> None:
    pytester.makepyfile(test_suite=TINY_PERF_TEST + "\n\ndef test_unrelated():\n    pass\n")
    path = pytester.path / "baselines" / "test_suite.json"
    path.parent.mkdir()
    path.write_text(content)
    for extra in ((), ("--mlxperf-save-baselines",)):
        result = pytester.runpytest_subprocess("--mlxperf", *extra)
        result.assert_outcomes(passed=1, failed=1)
        result.stdout.fnmatch_lines([f"*baseline file {path}: *"])
        result.stdout.fnmatch_lines([message])
        assert path.read_text() == content


def test_baseline_from_another_machine_is_never_compared(pytester: pytest.Pytester) -> None:
    path = saved_suite(pytester, TINY_PERF_TEST, "--mlxperf-machine", "laptop")
    data = json.loads(path.read_text())
    (entry,) = data["entries"].values()
    samples = entry["runs"][0]["samples"]
    samples["generation_tps"] = [v * 100 for v in samples["generation_tps"]]
    path.write_text(json.dumps(data))
    before = path.read_bytes()
    other = pytester.runpytest_subprocess("--mlxperf", "--mlxperf-machine", "ci-runner")
    other.assert_outcomes(passed=1)
    other.stdout.fnmatch_lines(
        ["*not comparable*", "*machine.name: 'laptop' -> 'ci-runner'*--mlxperf-machine*"]
    )
    strict = pytester.runpytest_subprocess(
        "--mlxperf", "--mlxperf-machine", "ci-runner", "--mlxperf-strict"
    )
    strict.assert_outcomes(failed=1)
    same = pytester.runpytest_subprocess("--mlxperf", "--mlxperf-machine", "laptop")
    same.assert_outcomes(failed=1)  # the 100x faster edit is caught on the same machine
    assert path.read_bytes() == before


def test_impossible_workload_is_refused_before_timing(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_suite="""
        def test_too_long(mlxperf):
            model = mlxperf.load("llamacpp", "synth:tiny")
            mlxperf.measure(model, prompt_tokens=4000, generation_tokens=200)

        def test_kv(mlxperf):
            model = mlxperf.load("mlx", "synth:tiny")
            mlxperf.measure(model, prompt_tokens=64, generation_tokens=64, max_kv_size=100)
        """
    )
    result = pytester.runpytest_subprocess("--mlxperf")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*needs 4200 tokens of context*but the model's context / max KV size is 4096*",
        ]
    )
    result.stdout.fnmatch_lines(["*needs 128 tokens of context*max KV size is 100*"])


def test_xdist_serializes_measurements_and_merges_results(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_suite="""
        import pytest

        @pytest.mark.parametrize("n", [1, 2, 3, 4])
        def test_perf(mlxperf, n):
            model = mlxperf.load("llamacpp", "synth:tiny")
            mlxperf.measure(model, prompt_tokens=16 * n, generation_tokens=32)

        @pytest.mark.parametrize("n", range(20))
        def test_plain(n):
            pass
        """
    )
    result = pytester.runpytest_subprocess("--mlxperf", "-n", "2", "--mlxperf-json", "r.json")
    result.assert_outcomes(passed=24)
    result.stdout.fnmatch_lines(["*mlxperf results*", "*test_perf?4?*llamacpp*pp64+tg32*new*"])
    records = json.loads((pytester.path / "r.json").read_text())["results"]
    assert len(records) == 4
    # perf_counter is system-wide monotonic on Linux: measurements in the two workers must not
    # overlap in time
    spans = sorted((r["raw"][0]["t_start"], r["raw"][-1]["t_end"]) for r in records)
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start


USER_ERRORS = """
def test_unknown_preset(mlxperf):
    mlxperf.load("mlx", "synth:nope")

def test_missing_gguf(mlxperf):
    mlxperf.load("llamacpp", "/nonexistent/model.gguf")
"""


@pytest.mark.parametrize("isolate", ["yes", "no"])
def test_user_error_in_the_worker_shows_its_message_alone(
    pytester: pytest.Pytester, isolate: str
) -> None:
    """A user's mistake reads the same with and without isolation: the one-line message,
    without the worker's traceback and without pytest's "During handling" chain."""
    pytester.makepyfile(test_suite=USER_ERRORS)
    result = pytester.runpytest_subprocess("--mlxperf", "--mlxperf-isolate", isolate)
    result.assert_outcomes(failed=2)
    text = result.stdout.str()
    failures = text.split("= FAILURES =", 1)[1].split("short test summary", 1)[0]
    assert "Traceback" not in failures and "During handling" not in failures
    assert failures.count("unknown model preset 'nope'") == 1
    assert failures.count("model '/nonexistent/model.gguf' not found") == 1


def test_a_crash_in_the_worker_keeps_its_traceback() -> None:
    """Anything that is not a user error is a bug or a backend crash: the worker's traceback
    is what tells where."""
    from pytest_mlxperf.backends.worker import WorkerError, WorkerModel
    from pytest_mlxperf.measuring.workload import Workload

    with pytest.raises(WorkerError) as user:
        WorkerModel("mlx", "synth:nope", None, timeout=60)
    assert str(user.value).startswith("unknown model preset 'nope'")
    assert "Traceback" not in str(user.value)
    model = WorkerModel("llamacpp", "synth:tiny", None, timeout=60)
    try:
        with pytest.raises(WorkerError, match="TypeError during run") as crash:
            model.run(None, [], Workload(prompt_tokens=4, generation_tokens=2))  # type: ignore[arg-type]
        assert "Traceback (most recent call last)" in str(crash.value)
    finally:
        model.close()
