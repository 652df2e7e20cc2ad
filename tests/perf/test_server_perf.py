"""An example suite for server users: ``pytest --mlxperf tests/perf/test_server_perf.py``.

The fixture starts each backend's OpenAI-compatible server (``mlx_lm.server``, llama-cpp-python's
server) on 127.0.0.1 on the synthetic model, once for the session, and stops it at the end. Every
request streams an exact-length prompt and exactly the asked number of tokens; TTFT, inter-token
latency percentiles, end-to-end latency, per-request and aggregate tokens/s and the server's
peak memory are gated against ``baselines/`` like any measurement.

To gate a server you run yourself (ollama, LM Studio, llama.cpp's ``llama-server``), set
``MLXPERF_SERVER_URL`` (e.g. ``http://127.0.0.1:11434``) and, where it serves several models,
``MLXPERF_SERVER_MODEL``.
"""

import os

import pytest

MODEL = "synth:tiny"
BACKENDS = ["mlx", "llamacpp"]
# an application's two steps: a summary, then an answer built on it
DOCUMENT = " the of and to in is that it for with" * 12


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_user(mlxperf, backend):
    server = mlxperf.serve(backend, MODEL)
    result = mlxperf.measure(server, prompt_tokens=128, generation_tokens=64, requests=4)
    assert result.ttft > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_four_users(mlxperf, backend):
    server = mlxperf.serve(backend, MODEL)
    # 8 requests x 63 gaps: enough for the p99 inter-token latency
    mlxperf.measure(server, prompt_tokens=32, generation_tokens=64, concurrency=4, requests=8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_application_pipeline(mlxperf, backend):
    """The seed's comparison: one application's end-to-end time on each server, same weights."""
    server = mlxperf.serve(backend, MODEL)

    def summarize_then_answer() -> str:
        summary = server.complete(DOCUMENT, max_tokens=32)
        return server.complete(DOCUMENT + " with" + summary, max_tokens=32)

    mlxperf.time(summarize_then_answer, name="summarize_then_answer")


@pytest.mark.skipif("MLXPERF_SERVER_URL" not in os.environ, reason="set MLXPERF_SERVER_URL")
def test_my_server(mlxperf):
    server = mlxperf.connect(
        os.environ["MLXPERF_SERVER_URL"], os.environ.get("MLXPERF_SERVER_MODEL")
    )
    mlxperf.measure(server, prompt_tokens=512, generation_tokens=128, requests=4)
