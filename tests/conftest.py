from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
# the smallest real perf test: one llama.cpp measurement of the tiny synthetic model
TINY_PERF_TEST = """
def test_perf(mlxperf):
    model = mlxperf.load("llamacpp", "synth:tiny")
    mlxperf.measure(model, prompt_tokens=16, generation_tokens=8)
"""


# What llama.cpp does on this machine with its defaults, probed once per test session in a
# worker process (``smoke.smoke``) before any test runs. Where its AMX kernels crash (README:
# Known backend problems) and repacking off runs, the suite's llama.cpp runs with repacking off
# (MLXPERF_REPACK=off: every load, worker and server follows it) and the header says so; any
# other failure changes nothing, so the tests fail as a user's would.
_PROBE: dict[str, Any] = {}


def pytest_configure(config: pytest.Config) -> None:
    if importlib.util.find_spec("llama_cpp") is None or "MLXPERF_REPACK" in os.environ:
        return
    from pytest_mlxperf.backends.smoke import smoke

    # the probe builds synth:tiny; the session's model cache starts from it (synth_cache)
    _PROBE["cache"] = tempfile.TemporaryDirectory(prefix="mlxperf-test-synth-")
    cache = Path(os.environ.get("MLXPERF_TEST_CACHE_DIR") or _PROBE["cache"].name)
    _PROBE["cache_dir"] = cache
    result = _PROBE["llamacpp"] = smoke("llamacpp", cache_dir=cache)
    if result.runs_with_repack_off_only:
        os.environ["MLXPERF_REPACK"] = "off"


def pytest_unconfigure(config: pytest.Config) -> None:
    if "cache" in _PROBE:
        _PROBE.pop("cache").cleanup()


def pytest_report_header(config: pytest.Config) -> list[str]:
    result = _PROBE.get("llamacpp")
    if result is None:
        repack = os.environ.get("MLXPERF_REPACK")
        return [f"llama.cpp: repacking as MLXPERF_REPACK={repack} says"] if repack else []
    build = ", ".join(facts["label"] for facts in result.build.values()) or "unknown"
    if result.runs_with_repack_off_only:
        return [
            f"llama.cpp (build {build}): its defaults crash on this machine, the known AMX crash "
            "(README: Known backend problems); this suite runs llama.cpp with weight "
            "repacking off (MLXPERF_REPACK=off)",
            f"  the probe: {result.error}",
        ]
    return [f"llama.cpp (build {build}), smoke test with its defaults: {result.describe()}"]


def below_minimum(package: str, minimum: str) -> str | None:
    """The installed ``package``'s version where it is older than ``minimum``, else ``None``."""
    from importlib.metadata import version

    from pytest_mlxperf.host.packages import below

    return below({package: version(package)}, package, minimum)


def skip_below(package: str, minimum: str, what: str) -> None:
    """Skip where the installed ``package`` is older than the ``minimum`` that ``what`` needs:
    the product refuses there with the reason (tested on its own), and the rest of the suite
    still runs on every declared floor (``tox -e lowest``)."""
    found = below_minimum(package, minimum)
    if found is not None:
        pytest.skip(f"{what} needs {package} >= {minimum}; this is {found}")


def skip_without_repack_setting() -> None:
    """Skip where llama-cpp-python cannot turn weight repacking off (``llama_model_params`` has
    no ``use_extra_bufts``: llama-cpp-python 0.3.10, the declared floor)."""
    from pytest_mlxperf.backends.llamacpp import can_turn_repacking_off

    if not can_turn_repacking_off():
        pytest.skip("this llama-cpp-python's llama.cpp has no use_extra_bufts (repacking off)")


@pytest.fixture(scope="session")
def llamacpp_probe() -> Any:
    """The session's probe of llama.cpp's defaults (``smoke.Smoke``); ``None`` where it did not
    run (llama.cpp not installed, or MLXPERF_REPACK set by the caller)."""
    return _PROBE.get("llamacpp")


@pytest.fixture(scope="session")
def synth_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One synthetic-model cache for the whole test session, also seen by pytester runs and
    worker processes through MLXPERF_CACHE_DIR."""
    path = Path(
        os.environ.get("MLXPERF_TEST_CACHE_DIR")
        or _PROBE.get("cache_dir")
        or tmp_path_factory.mktemp("synth")
    )
    old = os.environ.get("MLXPERF_CACHE_DIR")
    os.environ["MLXPERF_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("MLXPERF_CACHE_DIR", None)
    else:
        os.environ["MLXPERF_CACHE_DIR"] = old


def gone(pid: int, within: float = 5.0) -> bool:
    """The process ``pid`` no longer exists (reaped, not a zombie) within ``within`` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False
