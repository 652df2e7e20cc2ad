"""An example performance suite: run it with ``pytest --mlxperf tests/perf``.

It measures the project's own synthetic model (``synth:tiny``: built locally on first use, no
download) with both backends. Point ``MODEL`` at your own model to gate what you ship, e.g.
``mlx-community/Llama-3.2-3B-Instruct-4bit`` (from the local Hugging Face cache) or a GGUF path.
"""

import pytest

MODEL = "synth:tiny"
BACKENDS = ["mlx", "llamacpp"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_prompt_and_decode(mlxperf, backend):
    model = mlxperf.load(backend, MODEL)
    result = mlxperf.measure(model, prompt_tokens=128, generation_tokens=64)
    assert result.generation_tps > 0


@pytest.mark.mlxperf(tolerance={"generation_tps": "15%"})
@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_at_depth(mlxperf, backend):
    model = mlxperf.load(backend, MODEL)
    mlxperf.measure(model, prompt_tokens=32, generation_tokens=64, depth=512)
