"""Results in other tools' formats, so dashboards and CI actions built for them can track
pytest-mlxperf numbers.

- **Bencher Metric Format** (BMF, https://bencher.dev/docs/reference/bencher-metric-format):
  ``{benchmark: {measure: {"value", "lower_value", "upper_value"}}}``: one benchmark per
  measurement, one measure per metric (``prompt-tps``, ``generation-tps`` in tokens/s; ``ttft``,
  ``load-time`` in seconds; ``peak-memory`` in bytes), value = median, bounds = min and max.
- **pytest-benchmark JSON** (as ``pytest --benchmark-json`` writes it, read by
  ``pytest-benchmark compare`` and github-action-benchmark's ``tool: pytest``). That format
  holds durations, lower is better, and its ``ops`` is 1 / mean duration; each model
  measurement becomes two benchmarks whose samples are *seconds per token*, one for the prompt
  (group ``prompt``) and one for generation (group ``generation``), so ``ops`` reads as
  tokens/s; a timed callable's ``duration`` is one benchmark (group ``call``). TTFT is the
  prompt's duration as a whole, so it is not repeated; every median (peak memory, TTFT, load
  time) travels in ``extra_info``.

Both take a results file as ``results.load_results`` reads it.
Nothing here imports pytest.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

from pytest_mlxperf.store.results import ResultsFile, metric_names, samples_of

# The pytest-benchmark release whose JSON layout ``pytest_benchmark`` mirrors (its "version").
PYTEST_BENCHMARK_FORMAT = "5.2.3"
FORMATS = ("bmf", "pytest-benchmark")
# pytest-benchmark groups: the metric each exports, how to turn it into seconds, and the unit
PHASES: dict[str, tuple[str, Callable[[float], float], str]] = {
    "prompt": ("prompt_tps", lambda tps: 1.0 / tps, "s per prompt token; ops = prompt tok/s"),
    "generation": (
        "generation_tps",
        lambda tps: 1.0 / tps,
        "s per generated token; ops = generation tok/s",
    ),
    "call": ("duration", lambda seconds: seconds, "s per call"),
}


def benchmark_name(test: str, key: str) -> str:
    """``tests/perf/test_x.py::test_a[mlx] [mlx:synth:tiny:pp128+tg64]``: unique per
    measurement, readable in a dashboard."""
    return f"{test} [{key}]"


def bmf(results: ResultsFile) -> dict[str, dict[str, dict[str, float]]]:
    """Bencher Metric Format: per measurement, per metric the median with min and max."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (test, key), record in results.records.items():
        measures = {}
        for name in metric_names(record):
            samples = samples_of(record, name) or []  # never empty: the metric is recorded
            value: dict[str, float] = {"value": float(statistics.median(samples))}
            if len(samples) > 1:
                value.update(lower_value=float(min(samples)), upper_value=float(max(samples)))
            measures[name.replace("_", "-")] = value
        out[benchmark_name(test, key)] = measures
    return out


def _quartiles(data: Sequence[float]) -> tuple[float, float]:
    if len(data) < 2:
        return data[0], data[0]
    q1, _, q3 = statistics.quantiles(data, n=4, method="inclusive")
    return q1, q3


def _stats(data: list[float]) -> dict[str, Any]:
    """pytest-benchmark's ``stats`` block for durations ``data`` (one round each)."""
    mean = statistics.fmean(data)
    stddev = statistics.stdev(data) if len(data) > 1 else 0.0
    q1, q3 = _quartiles(sorted(data))
    iqr = q3 - q1
    low, high = q1 - 1.5 * iqr, q3 + 1.5 * iqr
    inside = [d for d in data if low <= d <= high]
    total = sum(data)
    stddev_outliers = sum(1 for d in data if abs(d - mean) > stddev)
    iqr_outliers = len(data) - len(inside)
    return {
        "min": min(data),
        "max": max(data),
        "mean": mean,
        "stddev": stddev,
        "rounds": len(data),
        "median": statistics.median(data),
        "iqr": iqr,
        "q1": q1,
        "q3": q3,
        "iqr_outliers": iqr_outliers,
        "stddev_outliers": stddev_outliers,
        "outliers": f"{stddev_outliers};{iqr_outliers}",
        "ld15iqr": min(inside),
        "hd15iqr": max(inside),
        "ops": len(data) / total if total else 0.0,
        "total": total,
        "data": data,
        "iterations": 1,
    }


def pytest_benchmark(results: ResultsFile) -> dict[str, Any]:
    """pytest-benchmark's JSON document: per model measurement two benchmarks (seconds per
    prompt token, seconds per generated token), per timed callable one (seconds per call);
    machine and commit info from the results file."""
    benchmarks = []
    first = next(iter(results.records.values()), None)
    provenance = first["provenance"] if first else {}
    for (test, key), record in results.records.items():
        medians = {
            name: statistics.median(samples)
            for name in metric_names(record)
            if (samples := samples_of(record, name))
        }
        for phase, (metric, seconds, unit) in PHASES.items():
            values = record["samples"].get(metric)
            if not values or min(values) <= 0:  # no such metric, or a rate of 0 (no seconds)
                continue
            short = test.split("::", 1)[-1]
            benchmarks.append(
                {
                    "group": phase,
                    "name": f"{short} [{key}]",
                    "fullname": benchmark_name(test, key),
                    "params": None,
                    "param": None,
                    "extra_info": {
                        "unit": unit,
                        "backend": record["backend"],
                        "model": record["model"],
                        "workload": record["workload"],
                        "medians": medians,
                        "packages": record["provenance"].get("packages", {}),
                        "verdict": record.get("verdict"),
                    },
                    "options": {"warmup": record.get("warmup", 0)},
                    "stats": _stats([seconds(v) for v in values]),
                }
            )
    machine = results.machine
    return {
        "machine_info": {
            "node": results.machine_id,
            "machine": machine.get("arch"),
            "processor": machine.get("cpu"),
            "system": machine.get("system"),
            "release": machine.get("os_major"),
            "python_version": provenance.get("python"),
            "cpu": {"brand_raw": machine.get("cpu"), "count": machine.get("cores")},
            "mlxperf_machine": machine,
        },
        "commit_info": {
            "id": provenance.get("git_commit"),
            "time": provenance.get("date"),
            "author_time": provenance.get("date"),
        },
        "benchmarks": benchmarks,
        "datetime": provenance.get("date"),
        "version": PYTEST_BENCHMARK_FORMAT,
    }


def export(results: ResultsFile, fmt: str) -> dict[str, Any]:
    """``results`` in format ``fmt`` (one of ``FORMATS``)."""
    if fmt == "bmf":
        return bmf(results)
    if fmt == "pytest-benchmark":
        return pytest_benchmark(results)
    raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
