"""Process peak memory on Linux for real, the macOS path with injected platform facts, and the
session's policy of a fresh worker per measurement where the peak cannot be reset."""

from __future__ import annotations

import struct
import sys
from pathlib import Path

import pytest

from pytest_mlxperf import memory
from pytest_mlxperf.config import Settings
from pytest_mlxperf.session import PerfSession
from pytest_mlxperf.workload import Workload


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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_linux_peak_resets_to_current() -> None:
    block = bytearray(300_000_000)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    del block
    assert memory.peak() >= 300_000_000
    assert memory.reset_peak()
    assert memory.peak() < 250_000_000


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

    from pytest_mlxperf import mlx_memory

    allocator = _Allocator()
    old_mx = types.SimpleNamespace(metal=allocator)
    assert mlx_memory.peak(old_mx) == 500
    assert mlx_memory.active(old_mx) == 100
    mlx_memory.reset_peak(old_mx)
    assert mlx_memory.peak(old_mx) == 100


def test_mlx_memory_prefers_the_top_level_functions_of_new_mlx() -> None:
    """New mlx deprecates ``mx.metal.*``: the top-level functions are the ones called."""
    from pytest_mlxperf import mlx_memory

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

    code = "import sys, pytest_mlxperf.mlx_memory; assert 'mlx' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
