"""The baseline store: round trip, clear errors on bad files (which are left untouched),
concurrent writers, and no silent verdict on anything it cannot read."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_mlxperf.store.baseline import (
    SCHEMA_VERSION,
    BaselineError,
    BaselineStore,
    entry_key,
    new_entry,
    pooled_samples,
    read_file,
)

NODE = "tests/perf/test_speed.py::test_decode[mlx]"


def entry(
    tps: float = 100.0, name: str = "mlx:m:pp8+tg8", version: str = "0.32.4"
) -> dict[str, Any]:
    return {
        "machine": {"name": "box"},
        "test": NODE,
        "name": name,
        "backend": "mlx",
        "model": {"name": "m", "hash": "abc"},
        "workload": {"prompt_tokens": 8},
        "runs": [
            {
                "samples": {
                    "generation_tps": [tps, tps * 1.01, tps * 0.99],
                    "peak_memory": [1e9] * 3,
                },
                "provenance": {"packages": {"mlx": version}},
            }
        ],
    }


def test_path_is_one_file_per_module(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    assert store.path_for(NODE) == tmp_path / "tests.perf.test_speed.json"


def test_round_trip_and_stable_readable_json(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    path = store.save(NODE, "k1", "box", entry(123.456789123))
    own, others = store.find(NODE, "k1", "box")
    assert own is not None and others == []
    assert own["runs"][0]["samples"]["generation_tps"][0] == 123.457  # 6 significant digits
    text = path.read_text()
    assert text.endswith("\n") and json.loads(text)["schema"] == SCHEMA_VERSION
    store.save(NODE, "k1", "box", entry(123.456789123))
    assert path.read_text() == text  # same data, same bytes: clean git diffs
    # nothing but the baseline file in the folder users commit: no lock, no temporary file
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_runs_with_the_same_versions_accumulate_up_to_the_limit(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    for tps in (100.0, 110.0, 120.0, 130.0):
        store.save(NODE, "k1", "box", entry(tps), keep_runs=3)
    own, _ = store.find(NODE, "k1", "box")
    assert own is not None
    assert [r["samples"]["generation_tps"][0] for r in own["runs"]] == [110.0, 120.0, 130.0]
    assert len(pooled_samples(own)["generation_tps"]) == 9
    # a new version, or a new identity, starts the series afresh
    store.save(NODE, "k1", "box", entry(90.0, version="0.33.0"), keep_runs=3)
    own, _ = store.find(NODE, "k1", "box")
    assert own is not None and len(own["runs"]) == 1


def test_other_machine_is_found_as_other(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    store.save(NODE, "k1", "laptop", entry())
    own, others = store.find(NODE, "k1", "ci-runner")
    assert own is None and len(others) == 1


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('{"schema": 1, "entries": {', "invalid JSON at line 1, column"),
        ('{\n  "schema": 1,\n  "entries": {"a": 1,}\n}', "invalid JSON at line 3"),
        ("", "invalid JSON at line 1, column 1"),
        ('{"schema": 99, "entries": {}}', "schema version 99"),
        ('{"entries": {}}', "schema version None"),
        ("[1, 2]", "top level must be a JSON object"),
        ('{"schema": 1}', "'entries' is missing"),
        ('{"schema": 1, "entries": {"k": {"test": 3}}}', "field 'machine' is missing"),
    ],
)
def test_bad_file_is_a_clear_error_and_is_never_overwritten(
    tmp_path: Path, content: str, problem: str
) -> None:
    store = BaselineStore(tmp_path)
    path = store.path_for(NODE)
    path.write_text(content)
    with pytest.raises(BaselineError) as info:
        store.find(NODE, "k1", "box")
    assert str(path) in str(info.value) and problem in str(info.value)
    with pytest.raises(BaselineError):
        store.save(NODE, "k1", "box", entry())
    assert path.read_text() == content


def test_bad_samples_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "b.json"
    for samples, problem in [
        ({"generation_tps": []}, "non-empty list"),
        ({"generation_tps": ["fast"]}, "is not a number"),
        ({"generation_tps": [True]}, "is not a number"),
        ({"generation_tps": [-1.0]}, "finite number >= 0"),
        ("many", "needs a 'samples' object"),
    ]:
        bad = entry()
        bad["runs"][0]["samples"] = samples
        path.write_text(json.dumps({"schema": SCHEMA_VERSION, "entries": {"k": bad}}))
        with pytest.raises(BaselineError, match=problem):
            read_file(path)


def test_two_tests_of_a_module_with_the_same_measurement_keep_their_own_entries(
    tmp_path: Path,
) -> None:
    store = BaselineStore(tmp_path)
    other = "tests/perf/test_speed.py::test_other[mlx]"
    store.save(NODE, "k", "box", entry(100.0))
    assert store.find(other, "k", "box") == (None, [])
    store.save(other, "k", "box", {**entry(50.0), "test": other})
    own, _ = store.find(NODE, "k", "box")
    theirs, _ = store.find(other, "k", "box")
    assert own is not None and theirs is not None
    assert own["runs"][0]["samples"]["generation_tps"][0] == 100.0
    assert theirs["runs"][0]["samples"]["generation_tps"][0] == 50.0


def test_an_entry_of_another_machine_is_found_to_be_reported(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    store.save(NODE, "k", "laptop", entry(100.0))
    own, others = store.find(NODE, "k", "ci-runner")
    assert own is None and [e["test"] for e in others] == [NODE]


def _writer(root: str, index: int) -> None:
    BaselineStore(Path(root)).save(NODE, f"key{index}", "box", entry(100.0 + index))


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), i)) for i in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    entries = read_file(BaselineStore(tmp_path).path_for(NODE))
    assert sorted(entries) == sorted(entry_key("box", NODE, f"key{i}") for i in range(8))
    assert not list(tmp_path.glob("*.tmp"))


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=json_values, wrap=st.booleans())
def test_arbitrary_json_never_crashes_the_loader(tmp_path: Path, data: Any, wrap: bool) -> None:
    path = tmp_path / "fuzz.json"
    document = {"schema": SCHEMA_VERSION, "entries": {"k": data}} if wrap else data
    path.write_text(json.dumps(document))
    try:
        entries = read_file(path)
    except BaselineError as exc:
        assert str(path) in str(exc)
        return
    # whatever loads is fully valid: every sample a finite number >= 0
    for e in entries.values():
        for samples in pooled_samples(e).values():
            assert samples and all(isinstance(v, (int, float)) and v >= 0 for v in samples)


def test_saved_file_is_readable_by_others(tmp_path: Path) -> None:
    path = BaselineStore(tmp_path).save(NODE, "k1", "box", entry())
    assert path.stat().st_mode & 0o044 == 0o044  # not mkstemp's private 0600


def test_run_keeps_its_canary_next_to_its_samples(tmp_path: Path) -> None:
    store = BaselineStore(tmp_path)
    fields = {
        "machine": {"name": "box"},
        "test": NODE,
        "name": "k",
        "backend": "mlx",
        "model": {"name": "m"},
        "workload": {"prompt_tokens": 8},
        "samples": {"generation_tps": [100.0, 101.0]},
        "provenance": {"packages": {"mlx": "0.32.4"}},
        "output_fingerprint": None,
    }
    canary = {"canary_compute": [0.0110123456789, 0.011], "canary_memory": [0.01, 0.0102]}
    store.save(NODE, "k", "box", new_entry(**fields, canary=canary))
    own, _ = store.find(NODE, "k", "box")
    assert own is not None
    assert own["runs"][0]["canary"] == {**canary, "canary_compute": [0.0110123, 0.011]}
    assert new_entry(**fields)["runs"][0]["canary"] is None
    # an entry written before the canary existed (as entry() is) still loads and pools
    store.save(NODE, "old", "box", entry())
    old, _ = store.find(NODE, "old", "box")
    assert old is not None and "canary" not in old["runs"][0]
    assert pooled_samples(old)["generation_tps"] == [100.0, 101.0, 99.0]
