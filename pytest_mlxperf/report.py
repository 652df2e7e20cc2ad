"""Rendering results: the terminal summary table and the machine-readable JSON file.

Everything here works on result *records* (``PerfResult.to_json()``), so results measured in
other processes (xdist workers) and results read back from files render the same way.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pytest_mlxperf import __version__
from pytest_mlxperf.files import atomic_write
from pytest_mlxperf.metrics import METRICS

Record = dict[str, Any]
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


def _cell(record: Record, name: str) -> str:
    text = METRICS[name].format(record["medians"][name])
    change = next((c["change"] for c in record["comparisons"] if c["metric"] == name), None)
    return text if change is None else f"{text} ({change:+.1%})"


def rows(records: Sequence[Record]) -> list[tuple[str, ...]]:
    return [
        (
            r["test"].split("::", 1)[-1],
            r["backend"],
            r["model"]["name"],
            r["workload_label"],
            *(_cell(r, name) for name in TABLE_METRICS),
            r["verdict"] + (" (saved)" if r["saved"] else ""),
        )
        for r in records
    ]


def table(records: Sequence[Record]) -> str:
    """A fixed-width table: one row per measurement, each metric with its change vs baseline."""
    body = rows(records)
    widths = [max(len(row[i]) for row in (HEADERS, *body)) for i in range(len(HEADERS))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(HEADERS), sep, *(line(row) for row in body)])


def results_document(
    records: Sequence[Record], machine: dict[str, Any], machine_id: str
) -> dict[str, Any]:
    return {
        "pytest_mlxperf": __version__,
        "machine": machine,
        "machine_id": machine_id,
        "results": list(records),
    }


def write_json(path: Path, document: Any) -> None:
    atomic_write(path, json.dumps(document, indent=2, sort_keys=True) + "\n")
