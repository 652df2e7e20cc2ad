"""The upgrade gate on hand-written results files: loading (with errors that name the file),
lining measurements up, comparability (machine, model, workload must match; provenance need
not), and verdicts by the plugin's own rules."""

from __future__ import annotations

import copy
import hashlib
import json
import random
from pathlib import Path
from typing import Any

import pytest

from pytest_mlxperf.gates.comparison import compare_files, resolve_reference
from pytest_mlxperf.host.packages import versions_label
from pytest_mlxperf.render.text import text_table
from pytest_mlxperf.stats.verdicts import Verdict
from pytest_mlxperf.store.results import InputError, ResultsError, load_results

MACHINE = {
    "arch": "x86_64",
    "cores": 2,
    "cpu": "AMD EPYC",
    "memory_gib": 24,
    "os_major": "6",
    "system": "Linux",
}
MLX = {"mlx": "0.30.0", "mlx-cpu": "0.30.0", "mlx-lm": "0.28.1", "llama-cpp-python": "0.3.16"}
BASE = {"prompt_tps": 300.0, "generation_tps": 120.0, "ttft": 0.4, "peak_memory": 6e6}
TEST_MLX = "tests/perf/test_x.py::test_decode[mlx]"
TEST_LLAMA = "tests/perf/test_x.py::test_decode[llamacpp]"


def make_record(
    test: str = TEST_MLX,
    backend: str = "mlx",
    *,
    scale: dict[str, float] | None = None,
    seed: int = 0,
    packages: dict[str, str] | None = None,
    prompt_tokens: int = 128,
    model_hash: str = "8e72f8302155e9ce",
) -> dict[str, Any]:
    """One ``PerfResult.to_json()``-shaped record: 5 samples per metric with ±2% noise, each
    metric's level multiplied by ``scale[metric]``."""
    rng = random.Random(seed)
    scale = scale or {}
    samples = {
        name: [level * scale.get(name, 1.0) * (1 + rng.uniform(-0.02, 0.02)) for _ in range(5)]
        for name, level in BASE.items()
    }
    label = f"pp{prompt_tokens}+tg64"
    return {
        "test": test,
        "key": f"{backend}:synth:tiny:{label}",
        "backend": backend,
        "model": {"backend": backend, "name": "synth:tiny", "hash": model_hash},
        "workload": {"prompt_tokens": prompt_tokens, "generation_tokens": 64, "depth": 0},
        "workload_label": label,
        "load_time": 0.07 * scale.get("load_time", 1.0),
        "samples": samples,
        "comparisons": [],
        "verdict": "new",
        "provenance": {
            "packages": packages or MLX,
            "date": f"2026-11-29T1{seed % 10}:00:00+00:00",
            "git_commit": f"{seed:040x}",
            "python": "3.11.7",
        },
    }


def make_document(*records: dict[str, Any], machine: dict[str, Any] | None = None) -> dict:
    """A results document as ``report.results_document`` writes it."""
    machine = machine or MACHINE
    machine_id = "linux-x86_64-" + hashlib.sha256(json.dumps(machine).encode()).hexdigest()[:10]
    return {
        "pytest_mlxperf": "0.1.0",
        "machine": machine,
        "machine_id": machine_id,
        "results": list(records) or [make_record(), make_record(TEST_LLAMA, "llamacpp")],
    }


def write(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document, indent=2))
    return path


def load_pair(tmp_path: Path, before: dict, after: dict) -> tuple:
    return (
        load_results(write(tmp_path / "before.json", before)),
        load_results(write(tmp_path / "after.json", after)),
    )


def cell_of(comparison: Any, metric: str, test: str = TEST_MLX) -> Any:
    row = next(r for r in comparison.rows if r.test == test and r.metric.name == metric)
    return row.cells[0]


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "does not exist"),
        ('{"results": [', "invalid JSON at line 1"),
        ('{"schema": 1, "entries": {}}', "not a pytest-mlxperf results file"),
        ("[1, 2]", "not a pytest-mlxperf results file"),
    ],
)
def test_unreadable_or_foreign_files_are_named(
    tmp_path: Path, content: str | None, problem: str
) -> None:
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ResultsError) as info:
        load_results(path)
    assert str(path) in str(info.value) and problem in str(info.value)


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda r: r["samples"].update(ttft=["fast"]), "sample 'fast' of 'ttft' is not a number"),
        (lambda r: r["samples"].update(ttft=[]), "must be a non-empty list"),
        (lambda r: r["samples"].update(ttft=[float("nan")]), "not a finite number"),
        (lambda r: r["samples"].update(speed=[1.0]), "unknown metric 'speed'"),
        (lambda r: r.pop("workload"), "field 'workload' is missing"),
        (lambda r: r.update(load_time=True), "field 'load_time'"),
    ],
)
def test_mangled_records_are_reported(tmp_path: Path, edit: Any, problem: str) -> None:
    record = make_record()
    edit(record)
    path = write(tmp_path / "r.json", make_document(record))
    with pytest.raises(ResultsError, match=problem) as info:
        load_results(path)
    assert "results[0]" in str(info.value) and str(path) in str(info.value)


def test_a_measurement_twice_in_one_file_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path / "r.json", make_document(make_record(), make_record()))
    with pytest.raises(ResultsError, match="appears twice"):
        load_results(path)


def test_versions_label_leaves_out_build_variants_that_repeat_mlx() -> None:
    assert versions_label(MLX, "mlx") == "mlx 0.30.0 / mlx-lm 0.28.1"
    assert versions_label(MLX, "llamacpp") == "llama-cpp-python 0.3.16"
    assert versions_label({"mlx": "0.30.0", "mlx-metal": "0.29.0"}, "mlx") == (
        "mlx 0.30.0 / mlx-metal 0.29.0"
    )
    assert versions_label({}, "mlx") == "versions unknown"


# --------------------------------------------------------------------------- verdicts


def test_a_file_against_itself_shows_no_change(tmp_path: Path) -> None:
    path = write(tmp_path / "r.json", make_document())
    comparison = compare_files([load_results(path), load_results(path)])
    assert not comparison.regressions
    for row in comparison.rows:
        (cell,) = row.cells
        assert cell.comparison is not None and cell.comparison.change == 0
        expected = Verdict.NOT_GATED if row.metric.name == "load_time" else Verdict.PASS
        assert cell.verdict is expected
    assert {r.metric.name for r in comparison.rows} == {*BASE, "load_time"}


def test_provenance_never_needs_to_match(tmp_path: Path) -> None:
    newer = {**MLX, "mlx": "0.31.0", "mlx-cpu": "0.31.0"}
    before, after = load_pair(
        tmp_path,
        make_document(make_record(seed=1)),
        make_document(make_record(seed=2, packages=newer)),
    )
    comparison = compare_files([before, after])
    assert {c.status for r in comparison.rows for c in r.cells} <= {"pass", "not gated"}
    cell = cell_of(comparison, "generation_tps")
    assert "mlx 0.30.0 -> 0.31.0" in cell.versions


def test_a_real_slowdown_is_a_regression_with_its_figures(tmp_path: Path) -> None:
    newer = {**MLX, "mlx": "0.31.0", "mlx-cpu": "0.31.0"}
    before, after = load_pair(
        tmp_path,
        make_document(make_record(seed=1)),
        make_document(make_record(seed=2, scale={"generation_tps": 0.7}, packages=newer)),
    )
    comparison = compare_files([before, after])
    cell = cell_of(comparison, "generation_tps")
    assert cell.verdict is Verdict.REGRESSION
    assert cell.comparison.change == pytest.approx(-0.3, abs=0.03)
    assert cell.comparison.p_value < 0.01
    assert [row.metric.name for row, _ in comparison.regressions] == ["generation_tps"]
    text = cell.describe()
    assert "tolerance 10%" in text and "n=5/5" in text and "mlx 0.30.0 -> 0.31.0" in text
    assert cell.upgraded and "unchanged" not in text
    assert cell_of(comparison, "prompt_tps").verdict is Verdict.PASS
    table = text_table(comparison)
    assert "REGRESSION #2 test_decode[mlx] pp128+tg64: generation_tps" in table
    assert "1 regression" in table


def test_directions_are_the_metrics_own(tmp_path: Path) -> None:
    before, after = load_pair(
        tmp_path,
        make_document(make_record(seed=1)),
        make_document(
            make_record(seed=2, scale={"peak_memory": 1.3, "prompt_tps": 1.4, "ttft": 0.7})
        ),
    )
    comparison = compare_files([before, after])
    assert cell_of(comparison, "peak_memory").verdict is Verdict.REGRESSION
    assert cell_of(comparison, "prompt_tps").verdict is Verdict.IMPROVEMENT
    assert cell_of(comparison, "ttft").verdict is Verdict.IMPROVEMENT


def test_load_time_is_reported_not_gated(tmp_path: Path) -> None:
    before, after = load_pair(
        tmp_path,
        make_document(make_record(seed=1)),
        make_document(make_record(seed=2, scale={"load_time": 5.0})),
    )
    cell = cell_of(compare_files([before, after]), "load_time")
    assert cell.verdict is Verdict.NOT_GATED
    assert cell.comparison.change == pytest.approx(4.0)


def test_tolerances_command_line_over_recorded_over_default(tmp_path: Path) -> None:
    slow = make_record(seed=2, scale={"generation_tps": 0.7})
    before, after = load_pair(tmp_path, make_document(make_record(seed=1)), make_document(slow))
    assert cell_of(compare_files([before, after]), "generation_tps").verdict is Verdict.REGRESSION
    wide = compare_files([before, after], tolerances={"generation_tps": 0.4})
    assert cell_of(wide, "generation_tps").verdict is Verdict.PASS
    assert cell_of(wide, "generation_tps").comparison.tolerance == 0.4

    recorded = copy.deepcopy(slow)  # the plugin ran this test with a 40% marker tolerance
    recorded["comparisons"] = [{"metric": "generation_tps", "tolerance": 0.4}]
    after = load_results(write(tmp_path / "recorded.json", make_document(recorded)))
    assert cell_of(compare_files([before, after]), "generation_tps").verdict is Verdict.PASS


def test_a_stricter_alpha_needs_more_evidence(tmp_path: Path) -> None:
    slow = make_record(seed=2, scale={"generation_tps": 0.7})
    before, after = load_pair(tmp_path, make_document(make_record(seed=1)), make_document(slow))
    cell = cell_of(compare_files([before, after], alpha=0.001), "generation_tps")
    assert cell.verdict is Verdict.INCONCLUSIVE  # 5 vs 5 samples cannot reach p < 0.001


# --------------------------------------------------------------------------- comparability


@pytest.mark.parametrize(
    ("after", "reason"),
    [
        (make_document(make_record(), machine={**MACHINE, "cpu": "Apple M2"}), "machine.cpu"),
        (make_document(make_record(prompt_tokens=256)), "workload.prompt_tokens: 128 -> 256"),
        (make_document(make_record(model_hash="0000")), "model.hash"),
    ],
    ids=["machine", "workload", "model"],
)
def test_different_identity_is_not_comparable(tmp_path: Path, after: dict, reason: str) -> None:
    if reason.startswith("workload"):  # another workload is another measurement key too
        after["results"][0]["key"] = make_record()["key"]
    before, other = load_pair(tmp_path, make_document(make_record()), after)
    comparison = compare_files([before, other])
    cells = [r.cells[0] for r in comparison.rows if r.test == TEST_MLX]
    assert {c.verdict for c in cells} == {Verdict.NOT_COMPARABLE}
    assert all(c.comparison is None and reason in c.reason for c in cells)
    assert not comparison.regressions
    assert f"not comparable: #2 test_decode[mlx] pp128+tg64: {reason}" in text_table(comparison)


def test_missing_and_new_measurements(tmp_path: Path) -> None:
    before, after = load_pair(
        tmp_path,
        make_document(make_record(), make_record(TEST_LLAMA, "llamacpp")),
        make_document(make_record(), make_record("tests/perf/test_x.py::test_new[mlx]")),
    )
    comparison = compare_files([before, after])
    assert [r.test for r in comparison.rows[::5]] == [
        TEST_MLX,
        TEST_LLAMA,
        "tests/perf/test_x.py::test_new[mlx]",
    ]
    assert cell_of(comparison, "ttft", TEST_LLAMA).status == "missing"
    assert cell_of(comparison, "ttft", "tests/perf/test_x.py::test_new[mlx]").verdict is (
        Verdict.NEW
    )


def test_reference_by_position_or_path(tmp_path: Path) -> None:
    paths = [tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"]
    assert resolve_reference(paths, None) == 0
    assert resolve_reference(paths, "2") == 1
    assert resolve_reference(paths, "-1") == 2
    assert resolve_reference(paths, str(paths[2])) == 2
    for bad in ("0", "4", "-4", str(tmp_path / "d.json")):
        with pytest.raises(InputError, match="--reference"):
            resolve_reference(paths, bad)


def test_a_later_reference_is_compared_against(tmp_path: Path) -> None:
    fast = make_document(make_record(seed=1))
    slow = make_document(make_record(seed=2, scale={"generation_tps": 0.7}))
    files = [load_results(write(tmp_path / f"{i}.json", d)) for i, d in enumerate((slow, fast))]
    comparison = compare_files(files, reference_index=1)
    assert comparison.reference.files == (files[1],)
    assert cell_of(comparison, "generation_tps").verdict is Verdict.REGRESSION
    assert text_table(comparison).startswith(f"#1 {files[0].path}")


def make_call_record(seed: int = 0, factor: float = 1.0) -> dict[str, Any]:
    """A record of ``mlxperf.time(fn)``: a ``duration`` metric and no model load."""
    rng = random.Random(seed)
    record = make_record("tests/perf/test_x.py::test_pipeline", seed=seed)
    record.update(
        key="call:pipeline",
        backend="callable",
        model={"name": "pipeline"},
        workload={"callable": "pipeline"},
        workload_label="pipeline",
        load_time=None,
        samples={"duration": [0.5 * factor * (1 + rng.uniform(-0.02, 0.02)) for _ in range(5)]},
    )
    return record


def test_timed_callables_are_compared_on_duration(tmp_path: Path) -> None:
    before, after = load_pair(
        tmp_path,
        make_document(make_call_record(seed=1)),
        make_document(make_call_record(seed=2, factor=1.3)),
    )
    comparison = compare_files([before, after])
    assert [row.metric.name for row in comparison.rows] == ["duration"]  # no load time
    (cell,) = comparison.rows[0].cells
    assert cell.verdict is Verdict.REGRESSION
    assert cell.upgraded is False and "unchanged" in cell.describe()
    # same versions on both sides, yet a significant change: the report says it is no upgrade
    assert "caution: 1 significant change(s) with the backend's versions unchanged" in (
        text_table(comparison)
    )
