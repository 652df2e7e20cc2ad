"""llama.cpp's build and weight repacking: what a loaded library reports of itself, repacking
as a setting (in-process, in a worker, in a started server), and the diagnosis of the known
crash of its AMX kernels, with injected platform facts everywhere and for real where it happens.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pytest_mlxperf import backends
from pytest_mlxperf.backends import llamacpp_build as build
from pytest_mlxperf.host.packages import versions, versions_line
from pytest_mlxperf.measuring.workload import Workload
from tests.conftest import skip_without_repack_setting

pytest.importorskip("llama_cpp")
pytestmark = pytest.mark.usefixtures("synth_cache")

# as printed by llama-cpp-python 0.3.36 built natively on a Zen 5 VM and on a Sapphire Rapids VM
ZEN5 = (
    "CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX_VNNI = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | "
    "BMI2 = 1 | AVX512 = 1 | AVX512_VBMI = 1 | AVX512_VNNI = 1 | AVX512_BF16 = 1 | "
    "LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
)
SAPPHIRE = ZEN5.replace("AVX512_BF16 = 1 | ", "AVX512_BF16 = 1 | AMX_INT8 = 1 | ")
LOAD_LOG = [
    "load_tensors: loading model tensors, this can take a while... (mmap = true)",
    "load_tensors:   CPU_Mapped model buffer size =     2.05 MiB",
    "load_tensors:          AMX model buffer size =     1.44 MiB",
]
AMX_FACTS = build.build_facts(SAPPHIRE, build.buffer_types(LOAD_LOG))
TINY = Workload(prompt_tokens=8, generation_tokens=2)


def test_a_build_is_read_from_what_the_library_prints() -> None:
    assert build.label(build.build_facts(ZEN5, ["CPU_Mapped", "CPU_REPACK"])) == "AVX512"
    assert AMX_FACTS["buffers"] == ["CPU_Mapped", "AMX"]
    assert AMX_FACTS["label"] == "AVX512, AMX"
    assert "AMX_INT8" in AMX_FACTS["features"]
    cuda = "CUDA : ARCHS = 890 | USE_GRAPHS = 1 | CPU : SSE3 = 1 | AVX2 = 1 | "
    assert build.label(build.build_facts(cuda, [])) == "AVX2, CUDA, no REPACK"
    server_log = "\n".join(["llama_model_loader: ...", *LOAD_LOG, SAPPHIRE, "INFO: started"])
    assert build.facts_from_log(server_log) == AMX_FACTS
    assert build.facts_from_log("INFO: Uvicorn running") is None


def test_a_build_is_shown_and_compared_with_its_version() -> None:
    zen = build.build_facts(ZEN5, ["CPU_Mapped", "CPU_REPACK"])
    before = {"packages": {"llama-cpp-python": "0.3.36"}, "builds": {build.PACKAGE: zen}}
    after = {**before, "builds": {build.PACKAGE: AMX_FACTS}}
    assert versions(before) == {"llama-cpp-python": "0.3.36 (AVX512)"}
    line = versions_line("llamacpp", versions(before), versions(after))
    assert line == "llama-cpp-python 0.3.36 (AVX512) -> 0.3.36 (AVX512, AMX)"
    assert versions({"packages": {"mlx": "0.32.4"}}) == {"mlx": "0.32.4"}


@pytest.mark.parametrize(
    ("sig", "facts", "repack", "flags", "named"),
    [
        (signal.SIGSEGV, AMX_FACTS, None, (), True),
        (signal.SIGILL, AMX_FACTS, True, (), True),
        (signal.SIGSEGV, AMX_FACTS, False, (), False),  # repacking off: not this crash
        (signal.SIGKILL, AMX_FACTS, None, (), False),
        (signal.SIGSEGV, build.build_facts(ZEN5, ["CPU_REPACK"]), None, ("amx_int8",), False),
        # weights left mapped on an AMX build: the AMX kernels did not run
        (signal.SIGSEGV, build.build_facts(SAPPHIRE, ["CPU_Mapped"]), None, (), False),
        (signal.SIGSEGV, None, None, ("avx2", "amx_int8", "amx_tile"), True),  # died loading
        (signal.SIGSEGV, None, None, ("avx2",), False),
    ],
)
def test_the_known_crash_is_named_only_where_it_applies(
    sig: int, facts: Any, repack: bool | None, flags: tuple[str, ...], named: bool
) -> None:
    said = build.crash_diagnosis(sig, facts, repack, flags)
    assert (said is not None) is named
    if named:
        assert said is not None
        for part in ("ggml_backend_amx_mul_mat", "#20824", "--mlxperf-repack off", "--no-repack"):
            assert part in said
        assert "GGML_NATIVE=OFF" in said and "--no-binary llama-cpp-python" in said
    assert backends.crash_diagnosis("mlx", sig, {build.PACKAGE: AMX_FACTS}, None, flags) is None


def test_repacking_off_leaves_the_weights_as_the_file_has_them() -> None:
    skip_without_repack_setting()
    on = backends.load("llamacpp", "synth:tiny@Q4_0", repack=True)
    off = backends.load("llamacpp", "synth:tiny@Q4_0", repack=False)
    try:
        facts_on, facts_off = on.build[build.PACKAGE], off.build[build.PACKAGE]
        assert facts_on["system_info"] == facts_off["system_info"] != ""
        if "REPACK" in facts_on["features"] and "avx2" in _flags():
            assert {"CPU_REPACK", "AMX"} & set(facts_on["buffers"]), facts_on
        assert facts_off["buffers"] == ["CPU_Mapped"]
        # off is part of the identity, so results with and without repacking never compare
        assert "repack" not in on.identity
        assert off.identity["repack"] is False
        assert {k: v for k, v in off.identity.items() if k != "repack"} == on.identity
    finally:
        on.close()
        off.close()
    with pytest.raises(ValueError, match=r"repack is a llama\.cpp load setting"):
        backends.load("mlx", "synth:tiny", repack=False)


def test_the_environment_sets_repacking_for_every_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLXPERF_REPACK", "off")
    assert backends.check_repack("llamacpp", None) is False
    assert backends.check_repack("llamacpp", True) is True  # an explicit setting wins
    monkeypatch.setenv("MLXPERF_REPACK", "sometimes")
    with pytest.raises(ValueError, match="environment variable MLXPERF_REPACK"):
        backends.check_repack("llamacpp", None)


def _flags() -> frozenset[str]:
    from pytest_mlxperf.host.machine import cpu_flags

    return cpu_flags()


def _killed_worker(repack: bool | None, facts: dict[str, Any], sig: int) -> str:
    """The error of a llama.cpp worker that reported ``facts`` as its build and then died by
    ``sig``: the real crash path, with the platform's facts injected."""
    from pytest_mlxperf.backends.worker import WorkerError, WorkerModel

    model = WorkerModel("llamacpp", "synth:tiny", None, 120, repack=repack, cpu_flags=frozenset())
    model.build = {build.PACKAGE: facts}
    os.kill(model.pid, sig)
    try:
        with pytest.raises(WorkerError) as caught:
            model.run([1, 2, 3, 4, 5, 6, 7, 8], [], TINY)
    finally:
        model.close()
    return str(caught.value)


def test_a_worker_killed_on_an_amx_build_names_the_crash_and_both_remedies() -> None:
    skip_without_repack_setting()
    message = _killed_worker(True, AMX_FACTS, signal.SIGSEGV)
    assert "was killed by SIGSEGV during run" in message
    assert "#20824" in message and "GGML_NATIVE=OFF" in message
    assert "#20824" not in _killed_worker(False, AMX_FACTS, signal.SIGSEGV)
    assert "#20824" not in _killed_worker(True, AMX_FACTS, signal.SIGKILL)


def test_a_server_killed_on_an_amx_build_names_the_crash(synth_cache: Path) -> None:
    pytest.importorskip("uvicorn")
    from pytest_mlxperf.serving.server import serve

    server = serve("llamacpp", "synth:tiny", cache_dir=synth_cache, timeout=120, repack=True)
    try:
        assert server.build[build.PACKAGE]["system_info"].startswith("CPU :")
        process = server.process
        assert process is not None
        process.kind = dataclasses.replace(
            process.kind, build_from_log=lambda log: {build.PACKAGE: AMX_FACTS}
        )
        os.kill(process.pid, signal.SIGSEGV)
        process.process.wait(10)
        report = process.exit_report(cpu_flags=frozenset())
    finally:
        server.close()
    assert "killed by signal 11" in report and "#20824" in report and "--no-repack" in report


def test_a_started_server_runs_with_repacking_off(synth_cache: Path) -> None:
    pytest.importorskip("uvicorn")
    skip_without_repack_setting()
    from pytest_mlxperf.serving.bench import ServeWorkload, measure_server
    from pytest_mlxperf.serving.server import serve

    server = serve("llamacpp", "synth:tiny", cache_dir=synth_cache, timeout=120, repack=False)
    try:
        assert server.process is not None
        assert "pytest_mlxperf.serving.llamacpp_norepack" in server.process.command
        assert server.identity["repack"] is False
        assert server.build[build.PACKAGE]["buffers"] == ["CPU_Mapped"]
        workload = ServeWorkload(prompt_tokens=16, generation_tokens=8, requests=2)
        measured = measure_server(server, workload, warmup=0, repetitions=1)
        assert measured.build == server.build
    finally:
        server.close()


def test_the_real_crash_is_diagnosed_where_it_happens(llamacpp_probe: Any) -> None:
    """On a machine where the session's probe saw llama.cpp's defaults die of the known crash
    (conftest), measuring with them fails with the diagnosis, never a bare signal."""
    if llamacpp_probe is None or not llamacpp_probe.runs_with_repack_off_only:
        pytest.skip(
            "llama.cpp's defaults do not crash on this machine "
            f"(AMX flags: {sorted(f for f in _flags() if f.startswith('amx')) or 'none'})"
        )
    from pytest_mlxperf.backends.worker import WorkerError, WorkerModel
    from pytest_mlxperf.measuring.measure import measure

    model = WorkerModel("llamacpp", "synth:tiny", None, 120, repack=True)
    try:
        with pytest.raises(WorkerError, match="#20824") as caught:
            measure(model, TINY, warmup=0, repetitions=1)
    finally:
        model.close()
    assert caught.value.diagnosis is not None


def test_mlxperf_machine_shows_each_backends_build_and_smoke_test() -> None:
    command = [sys.executable, "-m", "pytest_mlxperf.cli", "machine", "--backend", "llamacpp"]
    shown = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=300)
    report = json.loads(shown.stdout)
    smoke = report["backends"]["llamacpp"]["smoke"]
    facts = smoke["build"][build.PACKAGE]
    assert facts["system_info"].startswith("CPU :") and facts["buffers"]
    assert report["backends"]["llamacpp"]["versions"]["llama-cpp-python"].endswith(
        f"({facts['label']})"
    )
    assert (shown.returncode == 0) is smoke["ok"], shown.stderr
    if not smoke["ok"]:  # the known crash: named, and repacking off tried
        assert smoke["diagnosis"] and smoke["repack_off"] is not None
    text = subprocess.run(command, capture_output=True, text=True, timeout=300).stdout
    assert f"build: {facts['system_info']}" in text and "smoke test: " in text


def test_a_change_of_build_is_named_in_the_verdict(tmp_path: Path) -> None:
    from pytest_mlxperf.session import PerfSession
    from pytest_mlxperf.settings.config import Settings

    quick = {"machine": "box", "repetitions": 2, "warmup": 0}
    workload = Workload(prompt_tokens=16, generation_tokens=4)
    saver = PerfSession(Settings(save_baselines=True, **quick), tmp_path)
    try:
        saved = saver.run("t.py::t", saver.load("llamacpp", "synth:tiny"), workload, saver.settings)
    finally:
        saver.close()
    label = saved.provenance["builds"][build.PACKAGE]["label"]
    # the baseline as a run on another build of the same version would have recorded it
    path = saver.store.path_for("t.py::t")
    text = path.read_text()
    assert f'"label": "{label}"' in text
    path.write_text(text.replace(f'"label": "{label}"', '"label": "AVX2, AMX"'))
    session = PerfSession(Settings(confirm=0, **quick), tmp_path)
    try:
        result = session.run(
            "t.py::t", session.load("llamacpp", "synth:tiny"), workload, session.settings
        )
    finally:
        session.close()
    version = result.provenance["packages"]["llama-cpp-python"]
    assert f"llama-cpp-python {version} (AVX2, AMX) -> {version} ({label})" in result.report()


def test_a_smoke_test_that_runs_only_with_repacking_off_says_so() -> None:
    """What conftest's probe and ``mlxperf machine`` decide on, with the AMX crash injected."""
    from pytest_mlxperf.backends.smoke import Smoke

    crashed = Smoke("llamacpp", None, ok=False, error="killed by SIGSEGV", diagnosis="#20824")
    assert not crashed.runs_with_repack_off_only  # repacking off not tried (yet)
    crashed.repack_off = Smoke("llamacpp", False, ok=True, seconds=0.5)
    assert crashed.runs_with_repack_off_only
    assert "with repacking off (--mlxperf-repack off): ok" in crashed.describe()
    crashed.repack_off.ok = False
    assert not crashed.runs_with_repack_off_only
    assert not Smoke("llamacpp", None, ok=True).runs_with_repack_off_only
