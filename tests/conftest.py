from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# the smallest real perf test: one llama.cpp measurement of the tiny synthetic model
TINY_PERF_TEST = """
def test_perf(mlxperf):
    model = mlxperf.load("llamacpp", "synth:tiny")
    mlxperf.measure(model, prompt_tokens=16, generation_tokens=8)
"""


@pytest.fixture(scope="session")
def synth_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One synthetic-model cache for the whole test session, also seen by pytester runs and
    worker processes through MLXPERF_CACHE_DIR."""
    path = Path(os.environ.get("MLXPERF_TEST_CACHE_DIR") or tmp_path_factory.mktemp("synth"))
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
