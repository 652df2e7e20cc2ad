"""Process peak memory on Linux for real, the macOS path with injected platform facts, and the
session's policy of a fresh worker per measurement where the peak cannot be reset."""

from __future__ import annotations

import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_mlxperf.host import memory
from pytest_mlxperf.measuring.workload import Workload
from pytest_mlxperf.session import PerfSession
from pytest_mlxperf.settings.config import Settings


def test_parse_vmhwm() -> None:
    status = "Name:\tpython\nVmPeak:\t  999 kB\nVmHWM:\t  2048 kB\nVmRSS:\t 1000 kB\n"
    assert memory.parse_vmhwm(status) == 2048 * 1024
    with pytest.raises(ValueError):
        memory.parse_vmhwm("Name: x\n")


def test_parse_rusage_v4_reads_the_lifetime_max_footprint() -> None:
    fields = [0] * 35
    fields[7] = 111  # ri_phys_footprint: the current value, not the peak
    fields[28] = 5_000_000_000  # ri_lifetime_max_phys_footprint
    fields[33] = 222  # ri_interval_max_phys_footprint
    buffer = struct.pack("=16s35Q", b"u" * 16, *fields)
    assert memory.parse_rusage_v4(buffer) == 5_000_000_000


def test_platform_facts() -> None:
    assert memory.resettable("linux")
    assert not memory.resettable("darwin")
    assert memory.reset_peak("darwin") is False


def in_fresh_process(code: str) -> list[int]:
    """Run ``code`` in a new interpreter and return the integers it prints: memory figures of
    this test process depend on what earlier tests left in its allocator (freed but resident
    memory is reused without the RSS growing)."""
    done = subprocess.run(
        [sys.executable, "-c", "from pytest_mlxperf.host import memory\n" + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [int(v) for v in done.stdout.split()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_linux_peak_resets_to_current() -> None:
    peak, reset, after = in_fresh_process(
        """
        block = bytearray(300_000_000)
        block[::4096] = b"x" * len(block[::4096])  # touch every page
        del block
        print(memory.peak(), int(memory.reset_peak()), memory.peak())
        """
    )
    assert peak >= 300_000_000 and reset == 1
    assert after < 250_000_000


@pytest.mark.usefixtures("synth_cache")
@pytest.mark.parametrize("resettable", [True, False])
def test_fresh_worker_per_measurement_where_peak_cannot_be_reset(
    tmp_path: Path, resettable: bool
) -> None:
    session = PerfSession(Settings(repetitions=1, warmup=0), tmp_path, resettable)
    try:
        model = session.load("llamacpp", "synth:tiny")
        pids = []
        for n in (8, 16):
            session.run(
                "t.py::t", model, Workload(prompt_tokens=n, generation_tokens=4), session.settings
            )
            pids.append(model.pid)
        assert (pids[0] == pids[1]) is resettable
    finally:
        session.close()


@pytest.mark.usefixtures("synth_cache")
def test_regression_is_confirmed_in_a_fresh_worker(tmp_path: Path) -> None:
    import json

    wl = Workload(prompt_tokens=16, generation_tokens=8)
    saver = PerfSession(Settings(save_baselines=True, machine="box", warmup=0), tmp_path)
    try:
        saver.run("t.py::t", saver.load("llamacpp", "synth:tiny"), wl, saver.settings)
    finally:
        saver.close()
    path = next(tmp_path.glob("baselines/*.json"))
    data = json.loads(path.read_text())
    for entry in data["entries"].values():
        run = entry["runs"][0]
        run["samples"]["peak_memory"] = [v / 2 for v in run["samples"]["peak_memory"]]
    path.write_text(json.dumps(data))
    session = PerfSession(Settings(machine="box", warmup=0, confirm=1), tmp_path)
    try:
        model = session.load("llamacpp", "synth:tiny")
        first_pid = model.pid
        result = session.run("t.py::t", model, wl, session.settings)
        assert "confirmed by re-measurement 1 of 1" in result.notes
        assert model.pid != first_pid  # the confirmation ran in a new process
    finally:
        session.close()


class _Allocator:
    """A stand-in for mlx's memory functions: ``peak`` bytes until reset to ``active``."""

    def __init__(self) -> None:
        self.active, self.peak = 100, 500

    def reset_peak_memory(self) -> None:
        self.peak = self.active

    def get_peak_memory(self) -> int:
        return self.peak

    def get_active_memory(self) -> int:
        return self.active


def test_mlx_memory_uses_mx_metal_on_old_mlx() -> None:
    """Old mlx has the memory functions only under ``mx.metal``."""
    import types

    from pytest_mlxperf.backends import mlx_memory

    allocator = _Allocator()
    old_mx = types.SimpleNamespace(metal=allocator)
    assert mlx_memory.peak(old_mx) == 500
    assert mlx_memory.active(old_mx) == 100
    mlx_memory.reset_peak(old_mx)
    assert mlx_memory.peak(old_mx) == 100


def test_mlx_memory_prefers_the_top_level_functions_of_new_mlx() -> None:
    """New mlx deprecates ``mx.metal.*``: the top-level functions are the ones called."""
    from pytest_mlxperf.backends import mlx_memory

    class Deprecated:
        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"mx.metal.{name} called on new mlx")

    new_mx = _Allocator()
    new_mx.metal = Deprecated()  # type: ignore[attr-defined]
    mlx_memory.reset_peak(new_mx)
    assert mlx_memory.peak(new_mx) == 100
    assert mlx_memory.active(new_mx) == 100


def test_importing_mlx_memory_imports_no_mlx() -> None:
    import subprocess

    code = "import sys, pytest_mlxperf.backends.mlx_memory; assert 'mlx' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- growth and swap


def test_parse_vm_usage() -> None:
    status = "VmHWM:\t  4096 kB\nVmRSS:\t  2048 kB\nVmSwap:\t   512 kB\n"
    assert memory.parse_vm_usage(status) == (2048 * 1024, 512 * 1024)
    assert memory.parse_vm_usage("VmRSS:\t 1 kB\n") == (1024, None)  # no swap line: unknown
    with pytest.raises(ValueError):
        memory.parse_vm_usage("Name: x\n")


def test_parse_rusage_v4_reads_the_current_footprint_too() -> None:
    fields = [0] * 35
    fields[7], fields[28] = 111, 5_000_000_000
    buffer = struct.pack("=16s35Q", b"u" * 16, *fields)
    assert memory.parse_rusage_v4(buffer, memory._PHYS_FOOTPRINT) == 111


def test_usage_of_this_process_sees_an_allocation() -> None:
    before, after, swap = in_fresh_process(
        """
        before, swap = memory.usage()
        block = bytearray(100_000_000)
        block[::4096] = b"x" * len(block[::4096])
        after, _ = memory.usage()
        print(before, after, -1 if swap is None else swap)
        """
    )
    assert after - before > 90_000_000
    assert swap >= -1


def test_memory_growth_is_per_repetition_and_relative_to_the_start() -> None:
    from pytest_mlxperf.measuring.measure import memory_samples

    steady = memory_samples([(100, 100, 0), (100, 101, 0), (101, 100, 0)])
    assert steady == {"memory_growth": [0.0, 0.01, -0.01]}  # no swap: no swap metric
    leaking = memory_samples([(100, 110, None), (110, 120, None), (120, 130, None)])
    assert leaking["memory_growth"] == pytest.approx([0.1, 0.1, 0.1])
    swapping = memory_samples([(100, 100, 0), (100, 100, 4096)])
    assert swapping["swap_memory"] == [0.0, 4096.0]


def test_a_growth_baseline_near_zero_is_judged_by_difference_not_ratio() -> None:
    from pytest_mlxperf.stats.metrics import METRICS
    from pytest_mlxperf.stats.verdicts import Verdict, compare_metric

    growth = METRICS["memory_growth"]
    assert growth.absolute and not growth.higher_is_better
    base = [0.0, 0.0001, -0.0001, 0.0002, 0.0]
    # a ratio would call this +300%: it is noise around zero
    same = compare_metric(growth, base, [0.0003, 0.0, 0.0001, -0.0002, 0.0001], **TOL)
    assert same.verdict is Verdict.PASS and not same.noisy
    leak = compare_metric(growth, base, [0.021, 0.02, 0.022, 0.019, 0.02], **TOL)
    assert leak.verdict is Verdict.REGRESSION
    assert leak.change == pytest.approx(0.02)  # percentage points, not a ratio
    small = compare_metric(growth, base, [0.004, 0.005, 0.004, 0.006, 0.005], **TOL)
    assert small.verdict is Verdict.PASS  # real, but within the 1-point tolerance
    assert growth.format(-0.0123) == "-1.23 %"


TOL = {"tolerance": 0.01, "alpha": 0.01}

# A suite whose MLX measurement keeps every repetition's KV cache alive when LEAK is set, as a
# caller that holds on to caches does: the leak must be flagged, the same test without it not.
KEEPS_CACHES = """
import os

import pytest

KEPT = []


@pytest.fixture
def keep_caches(monkeypatch):
    if os.environ.get("LEAK"):
        import mlx_lm.models.cache as cache

        make = cache.make_prompt_cache

        def keeping(*args, **kwargs):
            KEPT.append(make(*args, **kwargs))
            return KEPT[-1]

        monkeypatch.setattr(cache, "make_prompt_cache", keeping)


def test_decode(mlxperf, keep_caches):
    model = mlxperf.load("mlx", "synth:tiny")
    mlxperf.measure(model, prompt_tokens=32, generation_tokens=16, depth=1024)
"""


@pytest.mark.usefixtures("synth_cache")
def test_kept_caches_are_flagged_by_memory_growth_and_the_same_test_without_them_is_not(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util
    import json
    import subprocess

    if importlib.util.find_spec("mlx_lm") is None:  # not imported here: pytester would unload it
        pytest.skip("mlx-lm is not installed")
    # built beforehand, not in the measuring process: what a build leaves behind settles during
    # the first timed repetition there, a one-off growth in the baseline (a user's model is built)
    build = "from pytest_mlxperf.backends import sources; sources.resolve('mlx', 'synth:tiny')"
    subprocess.run([sys.executable, "-c", build], check=True)
    pytester.makepyfile(test_suite=KEEPS_CACHES)
    args = ("--mlxperf", "--mlxperf-isolate", "no", "--mlxperf-confirm", "0")

    def growth(*extra: str) -> dict[str, object]:
        result = pytester.runpytest_subprocess(*args, "--mlxperf-json", "r.json", *extra)
        (record,) = json.loads((pytester.path / "r.json").read_text())["results"]
        assert "process_peak_memory" in record["samples"]
        if record["verdict"] == "regression":
            result.stdout.fnmatch_lines(["*memory_growth: * -> *tolerance 1%*"])
        return next((c for c in record["comparisons"] if c["metric"] == "memory_growth"), {})

    assert growth("--mlxperf-save-baselines") == {}  # recorded, nothing to compare yet
    monkeypatch.setenv("LEAK", "1")
    leaking = growth()
    assert leaking["verdict"] == "regression", leaking
    assert leaking["current_median"] > 0.01
    monkeypatch.delenv("LEAK")
    assert growth()["verdict"] == "pass"
