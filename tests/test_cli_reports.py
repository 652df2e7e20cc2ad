"""The ``mlxperf compare``, ``report`` and ``export`` commands, run as the installed console
script: exit codes (0 no regression, 1 regression, 2 bad input without a traceback), the
self-contained HTML report, Markdown, and exports that Bencher's schema and pytest-benchmark's
own ``compare`` accept. One end-to-end test feeds them real results of a tiny workload."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_mlxperf.store.results import metric_names
from tests.test_comparison import (
    MACHINE,
    TEST_LLAMA,
    make_call_record,
    make_document,
    make_record,
    write,
)

METRICS_PER_MEASUREMENT = 5  # prompt_tps, generation_tps, ttft, peak_memory, load_time


def mlxperf(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_mlxperf.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """Results files: a base run, a rerun of the same versions, a newer mlx whose decode is
    30% slower, and runs on another machine and with another workload."""
    newer = {"mlx": "0.31.0", "mlx-cpu": "0.31.0", "mlx-lm": "0.29.0", "llama-cpp-python": "0.3.16"}
    other_workload = make_record(prompt_tokens=256)
    other_workload["key"] = make_record()["key"]
    docs = {
        "base": make_document(make_record(seed=1), make_record(TEST_LLAMA, "llamacpp", seed=1)),
        "rerun": make_document(make_record(seed=2), make_record(TEST_LLAMA, "llamacpp", seed=2)),
        "slower": make_document(
            make_record(seed=3, scale={"generation_tps": 0.7}, packages=newer),
            make_record(TEST_LLAMA, "llamacpp", seed=3, packages=newer),
        ),
        "machine": make_document(make_record(seed=4), machine={**MACHINE, "cores": 16}),
        "workload": make_document(other_workload),
    }
    return {name: write(tmp_path / f"{name}.json", doc) for name, doc in docs.items()}


def test_a_file_compared_with_itself_shows_no_change(files: dict[str, Path]) -> None:
    run = mlxperf("compare", files["base"], files["base"])
    assert run.returncode == 0, run.stderr
    assert "+0.0%" in run.stdout and "regression" not in run.stdout
    assert re.search(r"verdicts: 2 not gated, 8 pass \(alpha=0.01\)", run.stdout)


def test_a_real_slowdown_fails_with_exit_1(files: dict[str, Path]) -> None:
    run = mlxperf("compare", files["base"], files["rerun"], files["slower"])
    assert run.returncode == 1, run.stdout + run.stderr
    assert "#1 (reference)" in run.stdout and "mlx 0.31.0 / mlx-lm 0.29.0" in run.stdout
    (line,) = [ln for ln in run.stdout.splitlines() if ln.startswith("REGRESSION")]
    assert line.startswith("REGRESSION #3 test_decode[mlx] pp128+tg64: generation_tps:")
    assert "mlx 0.30.0 -> 0.31.0" in line and "mlx-lm 0.28.1 -> 0.29.0" in line
    # the same pair with a tolerance beyond the slowdown passes
    assert mlxperf("compare", files["base"], files["slower"], "--tolerance", "40%").returncode == 0


def test_the_reference_can_be_chosen(files: dict[str, Path]) -> None:
    # judged against the slower run, the base run is an improvement, not a regression
    run = mlxperf("compare", files["base"], files["slower"], "--reference", "-1")
    assert run.returncode == 0 and "improvement" in run.stdout
    assert f"#2 (reference) {files['slower']}" in run.stdout


@pytest.mark.parametrize(("name", "reason"), [("machine", "machine.cores"), ("workload", "")])
def test_other_machine_or_workload_is_not_comparable(
    files: dict[str, Path], name: str, reason: str
) -> None:
    run = mlxperf("compare", files["base"], files[name])
    assert run.returncode == 0, run.stderr
    assert "not comparable: #2 test_decode[mlx] pp128+tg64: " in run.stdout
    assert (reason or "workload.prompt_tokens: 128 -> 256") in run.stdout
    assert "5 not comparable" in run.stdout  # all metrics of the mlx measurement


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"results": [{"test": ', "invalid JSON at line 1"),
        ('{"benchmarks": []}', "not a pytest-mlxperf results file"),
        (None, "does not exist"),
    ],
)
def test_bad_files_exit_2_naming_the_file(
    files: dict[str, Path], tmp_path: Path, content: str | None, problem: str
) -> None:
    bad = tmp_path / "bad.json"
    if content is not None:
        bad.write_text(content)
    for command in (
        ["compare", files["base"], bad],
        ["report", bad, "-o", tmp_path / "r.html"],
        ["export", bad, "--format", "bmf", "-o", tmp_path / "x.json"],
    ):
        run = mlxperf(*command)
        assert run.returncode == 2, run
        assert f"results file {bad}: {problem}" in run.stderr
        assert "Traceback" not in run.stderr and not run.stdout


def test_bad_choices_exit_2(files: dict[str, Path]) -> None:
    for args in (
        [files["base"]],
        [files["base"], files["rerun"], "--reference", "3"],
        [files["base"], files["rerun"], "--tolerance", "5"],
        [files["base"], files["rerun"], "--alpha", "1.5"],
    ):
        run = mlxperf("compare", *args)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run


def test_markdown_table(files: dict[str, Path]) -> None:
    run = mlxperf("compare", files["base"], files["slower"], "--markdown")
    assert run.returncode == 1
    lines = run.stdout.splitlines()
    header = next(ln for ln in lines if ln.startswith("| measurement"))
    assert header == "| measurement | metric | #1 (ref) | #2 | change | p | verdict |"
    row = next(ln for ln in lines if "generation_tps" in ln and "mlx]" in ln)
    assert "🔴 **regression**" in row and "-30" in row
    assert any(ln.startswith("- REGRESSION #2") for ln in lines)


def assert_self_contained_report(html: str, plots: int) -> None:
    assert html.startswith("<!DOCTYPE html>")
    assert "http" not in html  # no external script, stylesheet, font or image
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert html.count("<svg") == plots  # one per metric of each measurement


def test_html_report_is_self_contained_with_a_plot_per_metric(
    files: dict[str, Path], tmp_path: Path
) -> None:
    out, md = tmp_path / "report.html", tmp_path / "report.md"
    run = mlxperf(
        "report", files["base"], files["rerun"], files["slower"], "-o", out, "--markdown", md
    )
    assert run.returncode == 0, run.stderr
    html = out.read_text()
    assert_self_contained_report(html, plots=2 * METRICS_PER_MEASUREMENT)
    assert "mlx 0.31.0" in html and "regression" in html
    # every raw sample is a dot: 5 samples x 3 files x 4 sampled metrics x 2 measurements,
    # plus one load-time dot per file and measurement
    assert html.count("<circle") == 5 * 3 * 4 * 2 + 3 * 2
    assert md.read_text().startswith("## mlxperf upgrade comparison")


def test_bmf_export_follows_bencher_schema(files: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "bmf.json"
    assert mlxperf("export", files["base"], "--format", "bmf", "-o", out).returncode == 0
    data = json.loads(out.read_text())
    assert set(data) == {
        "tests/perf/test_x.py::test_decode[mlx] [mlx:synth:tiny:pp128+tg64]",
        "tests/perf/test_x.py::test_decode[llamacpp] [llamacpp:synth:tiny:pp128+tg64]",
    }
    for measures in data.values():
        assert set(measures) == {
            "prompt-tps",
            "generation-tps",
            "ttft",
            "peak-memory",
            "load-time",
        }
        for slug, value in measures.items():
            assert len(slug) <= 64 and set(value) <= {"value", "lower_value", "upper_value"}
            assert all(isinstance(v, float) for v in value.values())
            assert value.get("lower_value", value["value"]) <= value["value"]
            assert value["value"] <= value.get("upper_value", value["value"])
    assert set(measures["load-time"]) == {"value"}  # one sample: no bounds


def test_pytest_benchmark_export_is_read_by_its_compare(
    files: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "0001_mlxperf.json"
    document = json.loads(files["base"].read_text())
    document["results"].append(make_call_record())
    source = write(tmp_path / "with_call.json", document)
    run = mlxperf("export", source, "--format", "pytest-benchmark", "-o", out)
    assert run.returncode == 0, run.stderr
    data: dict[str, Any] = json.loads(out.read_text())
    bench = {b["group"]: b for b in data["benchmarks"] if "mlx]" in b["fullname"]}
    assert set(bench) == {"prompt", "generation"}
    record = json.loads(files["base"].read_text())["results"][0]
    rates = record["samples"]["generation_tps"]
    assert bench["generation"]["stats"]["data"] == pytest.approx([1 / r for r in rates])
    assert bench["generation"]["stats"]["rounds"] == 5
    compare = subprocess.run(
        [sys.executable, "-m", "pytest_benchmark", "compare", str(out), "--group-by=group"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert compare.returncode == 0, compare.stderr
    assert "Failed to load" not in compare.stdout + compare.stderr
    assert "benchmark 'generation': 2 tests" in compare.stdout
    assert "benchmark 'call': 1 tests" in compare.stdout
    assert "test_decode[mlx] [mlx:synth:tiny:pp128+tg64]" in compare.stdout


# --------------------------------------------------------------------------- real results

TINY_SUITE = """
import pytest

@pytest.mark.parametrize("backend", ["mlx", "llamacpp"])
def test_tiny(mlxperf, backend):
    model = mlxperf.load(backend, "synth:tiny")
    mlxperf.measure(model, prompt_tokens=16, generation_tokens=8)
"""


@pytest.fixture(scope="module")
def real_results(synth_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real results file of a tiny workload on both backends (a backend that is not
    installed is skipped by the plugin and simply absent)."""
    folder = tmp_path_factory.mktemp("real")
    (folder / "test_tiny_perf.py").write_text(TINY_SUITE)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--mlxperf",
            "--mlxperf-json",
            "results.json",
            "--mlxperf-isolate",
            "false",
            "test_tiny_perf.py",
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return folder / "results.json"


def test_real_results_compare_report_and_export(real_results: Path, tmp_path: Path) -> None:
    records = json.loads(real_results.read_text())["results"]
    assert records
    same = mlxperf("compare", real_results, real_results)
    assert same.returncode == 0, same.stdout + same.stderr
    assert "regression" not in same.stdout
    out = tmp_path / "report.html"
    assert mlxperf("report", real_results, real_results, "-o", out).returncode == 0
    assert_self_contained_report(out.read_text(), sum(len(metric_names(r)) for r in records))
    for fmt in ("bmf", "pytest-benchmark"):
        run = mlxperf("export", real_results, "--format", fmt, "-o", tmp_path / f"{fmt}.json")
        assert run.returncode == 0, run.stderr
