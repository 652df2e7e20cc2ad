"""The baseline store: reviewable JSON files under ``baselines/``, one per test module.

Each file maps an entry key (machine id + test + measurement) to an entry holding identity
(machine, backend, model, workload) and up to N *runs*, each with its provenance and the raw
per-repetition samples of every metric. Runs saved with the same package versions accumulate
and are pooled when comparing: separate processes of the same code differ more than the
repetitions inside one process, and a baseline pooled over several processes carries that
spread instead of mistaking it for a regression.

Writes are read-merge-replace under a file lock with an atomic rename, so concurrent writers
never lose each other's entries and a killed writer never leaves a half-written file. A file
that cannot be read is reported (with its path, and line where JSON says so) and is never
overwritten. Nothing here imports pytest.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_mlxperf.host.packages import versions
from pytest_mlxperf.stats.metrics import sample_problem
from pytest_mlxperf.store.files import JSONFileError, atomic_write, lock_for, read_json

SCHEMA_VERSION = 1
ENTRY_FIELDS = {
    "machine": dict,
    "test": str,
    "name": str,
    "backend": str,
    "model": dict,
    "workload": dict,
    "runs": list,
}


class BaselineError(Exception):
    """A baseline file is unreadable or invalid; the message names the file and the problem."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"baseline file {path}: {problem}")
        self.path = path
        self.problem = problem


def entry_key(machine_id: str, nodeid: str, measurement_key: str) -> str:
    """The key of an entry in its file (one file per test module): the test, its measurement
    and the machine, e.g. ``test_decode[mlx] [mlx:synth:tiny:pp128+tg64] @ linux-x86_64-...``.
    (Before 0.2 the test was not part of the key, so two tests of a module with the same
    measurement shared an entry; such old entries are still found, as another machine's.)"""
    return f"{nodeid.split('::', 1)[-1]} [{measurement_key}] @ {machine_id}"


def _round(value: float) -> float:
    # Six significant digits: honest for timings, and keeps git diffs readable.
    return float(f"{value:.6g}")


def new_entry(
    *,
    machine: dict[str, Any],
    test: str,
    name: str,
    backend: str,
    model: dict[str, Any],
    workload: dict[str, Any],
    samples: dict[str, list[float]],
    provenance: dict[str, Any],
    output_fingerprint: str | None,
    canary: dict[str, list[float]] | None = None,
) -> dict[str, Any]:
    """A baseline entry holding one run: identity (machine, test, measurement name, backend,
    model, workload), then the run's samples, provenance, greedy-output fingerprint and the
    machine speed canary timed in the same session (``canary.run_canary``)."""
    return {
        "machine": machine,
        "test": test,
        "name": name,
        "backend": backend,
        "model": model,
        "workload": workload,
        "runs": [
            {
                "samples": samples,
                "canary": None
                if canary is None
                else {kernel: [_round(v) for v in s] for kernel, s in canary.items()},
                "provenance": provenance,
                "output_fingerprint": output_fingerprint,
            }
        ],
    }


def _check_entry(path: Path, key: str, entry: Any) -> None:
    if not isinstance(entry, dict):
        raise BaselineError(path, f"entry {key!r} is not a JSON object")
    for field, kind in ENTRY_FIELDS.items():
        if not isinstance(entry.get(field), kind):
            raise BaselineError(
                path, f"entry {key!r}: field {field!r} is missing or not a {kind.__name__}"
            )
    if not entry["runs"]:
        raise BaselineError(path, f"entry {key!r}: 'runs' is empty")
    for i, run in enumerate(entry["runs"]):
        where = f"entry {key!r}, run {i}"
        if not isinstance(run, dict) or not isinstance(run.get("provenance"), dict):
            raise BaselineError(path, f"{where}: needs a 'provenance' object")
        if not isinstance(run.get("samples"), dict):
            raise BaselineError(path, f"{where}: needs a 'samples' object")
        problem = sample_problem(run["samples"], known_only=False)
        if problem:
            raise BaselineError(path, f"{where}: {problem}")


def pooled_samples(entry: dict[str, Any]) -> dict[str, list[float]]:
    """Every run's samples, per metric, in one list."""
    pooled: dict[str, list[float]] = {}
    for run in entry["runs"]:
        for metric, samples in run["samples"].items():
            pooled.setdefault(metric, []).extend(samples)
    return pooled


def _same_series(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether a new run extends an entry: same identity and same package versions (builds
    included: ``packages.versions``)."""
    recorded = [versions(e["runs"][-1]["provenance"]) for e in (old, new)]
    return (
        old["model"] == new["model"]
        and old["workload"] == new["workload"]
        and recorded[0] == recorded[1]
    )


def read_file(path: Path) -> dict[str, dict[str, Any]]:
    """The entries of one baseline file, validated; ``{}`` if the file does not exist."""
    try:
        data = read_json(path)
    except FileNotFoundError:
        return {}
    except JSONFileError as exc:
        raise BaselineError(path, str(exc)) from exc
    if not isinstance(data, dict):
        raise BaselineError(path, "top level must be a JSON object")
    schema = data.get("schema")
    if schema != SCHEMA_VERSION:
        raise BaselineError(
            path,
            f"schema version {schema!r}, but this pytest-mlxperf reads version {SCHEMA_VERSION}; "
            "re-record it with --mlxperf-save-baselines after moving the file away",
        )
    entries = data.get("entries")
    if not isinstance(entries, dict):
        raise BaselineError(path, "'entries' is missing or not a JSON object")
    for key, entry in entries.items():
        _check_entry(path, key, entry)
    return entries


def _dump(entries: Mapping[str, Any]) -> str:
    return (
        json.dumps({"schema": SCHEMA_VERSION, "entries": entries}, indent=2, sort_keys=True) + "\n"
    )


class BaselineStore:
    """Baselines under ``root``: one JSON file per test module."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_for(self, nodeid: str) -> Path:
        """``tests/perf/test_x.py::test_a[mlx]`` → ``<root>/tests.perf.test_x.json``."""
        module = nodeid.split("::", 1)[0]
        stem = module[:-3] if module.endswith(".py") else module
        return self.root / (stem.replace("/", ".").replace("\\", ".") + ".json")

    def find(
        self, nodeid: str, measurement_key: str, machine_id: str
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """The entry for this measurement on this machine, and the entries of the same
        measurement recorded on other machines (so a mismatch can be reported, not ignored)."""
        entries = read_file(self.path_for(nodeid))
        own = entries.get(entry_key(machine_id, nodeid, measurement_key))
        prefixes = (
            entry_key("", nodeid, measurement_key),
            f"{measurement_key} @ ",  # the key before 0.2, without the test
        )
        others = [e for k, e in entries.items() if k.startswith(prefixes) and e is not own]
        return own, others

    def save(
        self,
        nodeid: str,
        measurement_key: str,
        machine_id: str,
        entry: dict[str, Any],
        keep_runs: int = 1,
    ) -> Path:
        """Add one run (``entry["runs"]`` holds it) to its entry, keeping every other entry of
        the file. The entry keeps up to ``keep_runs`` runs while identity and package versions
        stay the same; anything else starts it afresh."""
        path = self.path_for(nodeid)
        entry = dict(entry)
        entry["runs"] = [
            {**run, "samples": {m: [_round(v) for v in s] for m, s in run["samples"].items()}}
            for run in entry["runs"]
        ]
        _check_entry(path, measurement_key, entry)
        path.parent.mkdir(parents=True, exist_ok=True)
        key = entry_key(machine_id, nodeid, measurement_key)
        with lock_for(path, timeout=60):
            entries = read_file(path)  # raises on a corrupt file, which is then left as it is
            old = entries.get(key)
            if old is not None and _same_series(old, entry):
                entry["runs"] = (old["runs"] + entry["runs"])[-keep_runs:]
            entries[key] = entry
            atomic_write(path, _dump(entries))
        return path
