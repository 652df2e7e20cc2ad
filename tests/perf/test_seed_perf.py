"""The seed benchmark this project started from, ready to run: Llama-3.2-3B-Instruct 4-bit, a
32,160-token prompt and 1,000 generated tokens; prompt tokens/s, generation tokens/s and peak
memory, on MLX and on llama.cpp (Q4_K_M, all layers on the GPU) with and without flash
attention.

Opt-in (minutes per repetition on a real model)::

    pytest --mlxperf -m seed tests/perf/test_seed_perf.py

Uses ``mlx-community/Llama-3.2-3B-Instruct-4bit`` and a Q4_K_M GGUF from the local Hugging Face
cache when they are there, else the synthetic ``llama-3.2-3b`` shape (built on first use). On a
CPU, shorten the prompt, e.g. ``MLXPERF_SEED_PROMPT_TOKENS=2048`` (see ``conftest.py``).
"""

import pytest

pytestmark = pytest.mark.seed


@pytest.mark.parametrize(
    ("backend", "flash_attn"),
    [("mlx", None), ("llamacpp", True), ("llamacpp", False)],
    ids=["mlx", "llamacpp+fa", "llamacpp-fa"],
)
def test_seed_prompt_and_decode(mlxperf, seed, backend, flash_attn):
    model = mlxperf.load(backend, seed.model(backend))
    llamacpp = (
        {} if flash_attn is None else {"flash_attn": flash_attn, "n_gpu_layers": seed.gpu_layers}
    )
    result = mlxperf.measure(
        model,
        prompt_tokens=seed.prompt_tokens,
        generation_tokens=seed.generation_tokens,
        **llamacpp,
    )
    assert result.prompt_tps > 0 and result.generation_tps > 0
