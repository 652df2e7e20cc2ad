"""Workloads people gate, on the synthetic model: context depth sweeps (llama-bench's ``-d``),
a long prompt read from a file, and llama.cpp's flash attention and thread count. Run with
``pytest --mlxperf tests/perf``; each parameter is part of the baseline identity."""

import pytest

MODEL = "synth:tiny"


@pytest.mark.parametrize("depth", [0, 1024, 2048])
@pytest.mark.parametrize("backend", ["mlx", "llamacpp"])
def test_decode_speed_by_context_depth(mlxperf, backend, depth):
    model = mlxperf.load(backend, MODEL)
    mlxperf.measure(model, prompt_tokens=32, generation_tokens=64, depth=depth)


@pytest.fixture(scope="session")
def long_document(tmp_path_factory):
    """A text file of a few thousand tokens (a stand-in for the 32K-token document of the
    benchmarks that motivated the project; the content is fixed, so its hash is too)."""
    words = [
        "the",
        "model",
        "reads",
        "a",
        "long",
        "report",
        "about",
        "quarterly",
        "numbers",
        "and",
        "summarises",
        "it",
    ]
    path = tmp_path_factory.mktemp("prompts") / "report.txt"
    path.write_text(" ".join(words[i % len(words)] + str(i % 97) for i in range(3000)))
    return path


@pytest.mark.parametrize("backend", ["mlx", "llamacpp"])
def test_long_prompt_from_file(mlxperf, backend, long_document):
    model = mlxperf.load(backend, MODEL)
    mlxperf.measure(model, prompt_file=str(long_document), prompt_tokens=1024, generation_tokens=32)


@pytest.mark.parametrize("flash_attn", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_llamacpp_settings(mlxperf, flash_attn, threads):
    model = mlxperf.load("llamacpp", MODEL)
    mlxperf.measure(
        model, prompt_tokens=512, generation_tokens=64, flash_attn=flash_attn, threads=threads
    )
