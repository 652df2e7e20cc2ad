"""The perf suite of ``ab_study.py``: one synthetic model per backend whose depth is set by the
environment (``STUDY_LAYERS``, default 10), so that one more layer is a real slowdown of known
shape (its true size is measured by the study, not assumed).

Run by the study in fresh processes: ``pytest --mlxperf benchmarks/ab_study_suite.py``.
"""

import os

import pytest

from pytest_mlxperf import synth

LAYERS = int(os.environ.get("STUDY_LAYERS", "10"))
# llama.cpp threads for prompt and decode; unset: the plugin's default (physical cores)
THREADS = int(os.environ["STUDY_THREADS"]) if os.environ.get("STUDY_THREADS") else None
SHAPE = synth.ModelShape(num_hidden_layers=LAYERS)


@pytest.mark.parametrize("backend", ["mlx", "llamacpp"])
def test_study(mlxperf, backend):
    model = mlxperf.load(backend, str(synth.build(backend, SHAPE)))
    settings = {"threads": THREADS} if backend == "llamacpp" and THREADS else {}
    mlxperf.measure(
        model, prompt_tokens=128, generation_tokens=64, name=f"{backend}:study", **settings
    )
