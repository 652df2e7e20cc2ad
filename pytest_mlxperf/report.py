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


def _value(record: Record, name: str) -> str:
    value = record["medians"].get(name)
    return "-" if value is None else METRICS[name].format(value)


def _cell(record: Record, name: str) -> str:
    text = _value(record, name)
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
    return _fixed_width(HEADERS, rows(records))


def _fixed_width(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(row) for row in body)])


BACKEND_HEADERS = (
    "model",
    "workload",
    "backend",
    "quantization",
    "prompt",
    "generation",
    "TTFT",
    "peak mem",
    "load",
)


def quantization_label(model: dict[str, Any]) -> str:
    """``4bit/g64`` for MLX, llama.cpp's type (``Q4_K - Medium``) for GGUF."""
    quant = model.get("quantization")
    if isinstance(quant, dict):
        return f"{quant.get('bits')}bit/g{quant.get('group_size')}"
    if isinstance(quant, str):
        return quant.split("B ", 1)[-1]  # llama.cpp's desc: "<arch> <size>B <type>"
    return "unquantized"


def backend_table(records: Sequence[Record]) -> str | None:
    """The same model (by name) and workload measured with more than one backend, side by side:
    the table people otherwise build by hand from mlx_lm.benchmark and llama-bench output."""
    groups: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        groups.setdefault((r["model"]["name"].split("@")[0], r["workload_label"]), []).append(r)
    body = [
        (
            model,
            label,
            r["backend"],
            quantization_label(r["model"]),
            *(_value(r, m) for m in TABLE_METRICS),
        )
        for (model, label), group in groups.items()
        if len({r["backend"] for r in group}) > 1
        for r in sorted(group, key=lambda r: r["backend"])
    ]
    return _fixed_width(BACKEND_HEADERS, body) if body else None


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
