"""End to end on the real backends and the project's own tiny synthetic model: the example suite
runs for both backends, baselines are saved, an unchanged rerun passes, and a baseline edited to
be faster (or to use less memory) fails exactly the tests it belongs to, with a full message."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from tests.conftest import REPO, TINY_PERF_TEST, skip_below

EXAMPLE = REPO / "tests" / "perf" / "test_example_perf.py"
BASELINE = "baselines/test_example_perf.json"
# Separate processes of the same code differ by several percent on a shared 2-core machine;
# the e2e checks use a wide tolerance and large edits so that they test the plugin, not the
# machine's noise (benchmarks/ measures the false-alarm rate of the defaults).
WIDE = ["--mlxperf", "--mlxperf-tolerance", "30%"]


def scale(path: Path, key_part: str, metric: str, factor: float) -> None:
    data = json.loads(path.read_text())
    hits = [k for k in data["entries"] if key_part in k]
    assert len(hits) == 1, hits
    for run in data["entries"][hits[0]]["runs"]:
        run["samples"][metric] = [v * factor for v in run["samples"][metric]]
    path.write_text(json.dumps(data, indent=2))


@pytest.mark.usefixtures("synth_cache")
def test_save_rerun_and_catch_edited_regressions(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_example_perf=EXAMPLE.read_text())
    saved = pytester.runpytest_subprocess(*WIDE, "--mlxperf-save-baselines")
    saved.assert_outcomes(passed=4)
    saved.stdout.fnmatch_lines(["*mlxperf results*", "*test_prompt_and_decode?mlx?*new (saved)*"])
    baseline = pytester.path / BASELINE
    entries = json.loads(baseline.read_text())["entries"]
    assert len(entries) == 4
    for entry in entries.values():
        (run,) = entry["runs"]
        assert len(run["samples"]["generation_tps"]) == 5

    rerun = pytester.runpytest_subprocess(*WIDE, "--mlxperf-json", "results.json")
    rerun.assert_outcomes(passed=4)
    results = json.loads((pytester.path / "results.json").read_text())["results"]
    assert {r["verdict"] for r in results} <= {"pass", "improvement"}
    raw = results[0]["raw"][0]
    assert len(raw["t_tokens"]) == len(raw["tokens"]) == 64  # every generated token stamped

    before = baseline.read_bytes()
    scale(baseline, "mlx:synth:tiny:pp128+tg64", "generation_tps", 4.0)
    scale(baseline, "llamacpp:synth:tiny:pp32+tg64@d512", "peak_memory", 0.5)
    assert baseline.read_bytes() != before
    edited = baseline.read_bytes()

    caught = pytester.runpytest_subprocess(*WIDE, "-rf")
    caught.assert_outcomes(passed=2, failed=2)
    caught.stdout.fnmatch_lines(
        [
            "*mlxperf regression: test_example_perf.py::test_prompt_and_decode?mlx?*",
            "*generation_tps: * tok/s -> * tok/s (-*%; tolerance 30%, Mann-Whitney p=* vs "
            "alpha=0.01, n=5/5)*",
            "*confirmed by re-measurement 1 of 1*",
            f"*baseline file: *{BASELINE}*",
            "*versions: mlx * -> *, mlx-lm * -> **",
        ]
    )
    caught.stdout.fnmatch_lines(
        [
            "*mlxperf regression: test_example_perf.py::test_decode_at_depth?llamacpp?*",
            "*peak_memory: * MB -> * MB (+*%*",
            "*versions: llama-cpp-python * -> **",
        ]
    )
    caught.stdout.fnmatch_lines(
        [
            "PERF REGRESSION test_example_perf.py::test_prompt_and_decode[[]mlx[]]*",
            "PERF REGRESSION test_example_perf.py::test_decode_at_depth[[]llamacpp[]]*",
        ]
    )
    assert baseline.read_bytes() == edited  # a failing run never rewrites baselines


@pytest.mark.usefixtures("synth_cache")
def test_changed_identity_is_not_compared(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        def test_one(mlxperf):
            model = mlxperf.load("llamacpp", "synth:tiny@Q8_0")
            mlxperf.measure(model, prompt_tokens=16, generation_tokens=8)
        """
    )
    pytester.runpytest_subprocess("--mlxperf", "--mlxperf-save-baselines").assert_outcomes(passed=1)
    path = next((pytester.path / "baselines").glob("*.json"))
    data = json.loads(path.read_text())
    (entry,) = data["entries"].values()
    entry["model"]["hash"] = "0" * 16
    path.write_text(json.dumps(data))
    lenient = pytester.runpytest_subprocess("--mlxperf")
    lenient.assert_outcomes(passed=1)
    lenient.stdout.fnmatch_lines(["*not comparable*"])
    strict = pytester.runpytest_subprocess("--mlxperf", "--mlxperf-strict")
    strict.assert_outcomes(failed=1)
    strict.stdout.fnmatch_lines(["*identity differs from the baseline: model.hash*"])


@pytest.mark.usefixtures("synth_cache")
def test_generated_count_and_llama_counters_agree_with_timestamps() -> None:
    from pytest_mlxperf.backends import load
    from pytest_mlxperf.measuring.measure import measure
    from pytest_mlxperf.measuring.workload import Workload

    model = load("llamacpp", "synth:tiny")
    try:
        m = measure(model, Workload(prompt_tokens=64, generation_tokens=16), repetitions=2)
    finally:
        model.close()
    for raw in m.raw:
        assert raw.generated == 16
        assert raw.backend_counters["n_p_eval"] == 64  # exactly one prefill, no reuse
        assert raw.backend_counters["n_eval"] == 15  # then one decode per further token
        ours = (raw.t_tokens[0] - raw.t_start) * 1e3
        assert raw.backend_counters["t_p_eval_ms"] <= ours * 1.05


@pytest.mark.usefixtures("synth_cache")
def test_junit_xml_has_a_property_per_metric(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=TINY_PERF_TEST)
    result = pytester.runpytest_subprocess("--mlxperf", "--junitxml", "junit.xml")
    result.assert_outcomes(passed=1)
    xml = (pytester.path / "junit.xml").read_text()
    key = "mlxperf.llamacpp:synth:tiny:pp16+tg8"
    for name in ("verdict", "prompt_tps", "generation_tps", "ttft", "peak_memory", "load_time"):
        assert f'<property name="{key}.{name}"' in xml


def test_users_callable_is_timed_and_gated(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        test_pipeline="""
        import os, time

        def pipeline(seconds):
            time.sleep(seconds)

        def test_pipeline(mlxperf):
            result = mlxperf.time(pipeline, float(os.environ["DELAY"]), name="summarize")
            assert len(result.samples["duration"]) == 5
        """
    )
    monkeypatch.setenv("DELAY", "0.01")
    pytester.runpytest_subprocess("--mlxperf", "--mlxperf-save-baselines").assert_outcomes(passed=1)
    pytester.runpytest_subprocess("--mlxperf").assert_outcomes(passed=1)
    monkeypatch.setenv("DELAY", "0.03")
    slow = pytester.runpytest_subprocess("--mlxperf")
    slow.assert_outcomes(failed=1)
    slow.stdout.fnmatch_lines(["*duration: 10.* ms -> 30.* ms (+*%*", "*call:summarize*"])


@pytest.mark.usefixtures("synth_cache")
def test_finetune_is_measured_in_the_worker_and_gated(pytester: pytest.Pytester) -> None:
    # looked up, not imported: pytester drops what a test imports from sys.modules afterwards,
    # and MLX's native module cannot be imported a second time in one process
    if importlib.util.find_spec("mlx_lm") is None:
        pytest.skip("mlx-lm is not installed")
    from pytest_mlxperf.backends.finetune import MIN_MLX_LM

    skip_below("mlx-lm", MIN_MLX_LM, "fine-tuning")
    pytester.makepyfile(
        test_lora="""
        from pytest_mlxperf.finetune import make_dataset

        def test_lora(mlxperf, tmp_path):
            data = make_dataset(tmp_path / "train.jsonl", n=16, tokens=40)
            model = mlxperf.load("mlx", "synth:tiny@fp32")
            result = mlxperf.finetune(
                model, data, iterations=2, batch_size=2, max_seq_length=64, num_layers=2
            )
            assert result.median("trained_tps") > 0

        def test_llamacpp_cannot_finetune(mlxperf, tmp_path):
            model = mlxperf.load("llamacpp", "synth:tiny")
            mlxperf.finetune(model, make_dataset(tmp_path / "t.jsonl", n=4))
        """
    )
    args = ("--mlxperf", "--mlxperf-repetitions", "3", "--mlxperf-warmup", "0")
    result = pytester.runpytest_subprocess(*args, "--mlxperf-json", "r.json")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*fine-tuning is measured with MLX only, not 'llamacpp'*"])
    (record,) = json.loads((pytester.path / "r.json").read_text())["results"]
    assert record["workload_label"] == "lora-b2-l2-s64"
    assert set(record["samples"]) == {
        "iterations_per_s",
        "trained_tps",
        "peak_memory",
        "process_peak_memory",
        "memory_growth",
    }
    assert all(len(v) == 3 for v in record["samples"].values())
