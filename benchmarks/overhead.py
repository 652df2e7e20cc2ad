"""Where the example suite's time goes, and how much the harness adds beyond the measured work.

Runs ``pytest --mlxperf tests/perf/test_example_perf.py`` once in a subprocess with the default
settings and splits its wall time, from the results file, into: model loads (in the worker),
warm-up runs, timed repetitions, and everything else (pytest start-up, worker process starts
and backend imports, baselines, statistics, reporting).

Usage: python benchmarks/overhead.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results.json"
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "--mlxperf",
                "tests/perf/test_example_perf.py",
                "-p",
                "no:cacheprovider",
                "-q",
                "--mlxperf-json",
                str(out),
                "--mlxperf-baselines-dir",
                str(Path(tmp) / "baselines"),
            ],
            check=True,
            capture_output=True,
        )
        total = time.perf_counter() - t0
        records = json.loads(out.read_text())["results"]
    loads = {(r["backend"], r["model"]["hash"]): r["load_time"] for r in records}
    load = sum(loads.values())
    timed = sum(raw["t_end"] - raw["t_start"] for r in records for raw in r["raw"])
    measuring = sum(r["wall_time"] for r in records)
    warmup = measuring - timed  # warm-up runs, KV cache set-up, depth prefill, worker calls
    rest = total - load - measuring
    print(f"example suite, {len(records)} measurements, defaults (warm-up 1, 5 repetitions)")
    for name, value in (
        ("model loads", load),
        ("warm-up + setup", warmup),
        ("timed repetitions", timed),
        ("everything else", rest),
    ):
        print(f"  {name:18} {value:6.1f} s  {value / total:5.1%}")
    print(f"  {'total':18} {total:6.1f} s")
    print(f"measured work (warm-up + repetitions) / total: {measuring / total:.2f}")


if __name__ == "__main__":
    main()
