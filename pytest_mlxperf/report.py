"""Rendering results: the terminal summary table and the machine-readable JSON file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_mlxperf import __version__
from pytest_mlxperf.files import atomic_write
from pytest_mlxperf.metrics import METRICS
from pytest_mlxperf.session import PerfResult

TABLE_METRICS = ("prompt_tps", "generation_tps", "ttft", "peak_memory", "load_time")
HEADERS = (
    "test",
    "backend",
    "model",
    "workload",
    "prompt",
    "generation",
    "TTFT",
    "peak mem",
    "load",
    "verdict",
)


def _cell(result: PerfResult, name: str) -> str:
    text = METRICS[name].format(result.median(name))
    change = next((c.change for c in result.comparisons if c.metric.name == name), None)
    return text if change is None else f"{text} ({change:+.1%})"


def rows(results: Sequence[PerfResult]) -> list[tuple[str, ...]]:
    out = []
    for r in results:
        m = r.measurement
        test = r.nodeid.split("::", 1)[-1]
        verdict = r.verdict.value + (" (saved)" if r.saved else "")
        out.append(
            (
                test,
                m.backend,
                m.model["name"],
                m.workload.label,
                *(_cell(r, name) for name in TABLE_METRICS),
                verdict,
            )
        )
    return out


def table(results: Sequence[PerfResult]) -> str:
    """A fixed-width table: one row per measurement, each metric with its change vs baseline."""
    body = rows(results)
    widths = [max(len(row[i]) for row in (HEADERS, *body)) for i in range(len(HEADERS))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(HEADERS), sep, *(line(row) for row in body)])


def results_document(
    results: Sequence[PerfResult], machine: dict[str, Any], machine_id: str
) -> dict[str, Any]:
    return {
        "pytest_mlxperf": __version__,
        "machine": machine,
        "machine_id": machine_id,
        "results": [r.to_json() for r in results],
    }


def write_json(path: Path, document: dict[str, Any]) -> None:
    atomic_write(path, json.dumps(document, indent=2, sort_keys=True) + "\n")
